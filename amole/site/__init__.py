"""A site's side after (and between) rounds: its own folder, the personalized model kept there, the exported model
card, and the ``amole`` command line."""
