"""Tools around the federation, off a round's path: the demo launcher, the experiment runner, the results
collector and the no-model yardstick. They import the apps and the core; nothing imports them."""
