"""What a client keeps in its site folder between rounds: the newest round before the asked one, two kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amole.site.folder import PrivateAdapters, site_folder


def test_load_before_finds_the_newest_older_round_and_old_rounds_are_pruned(tmp_path: Path) -> None:
    kept = PrivateAdapters(site_folder(tmp_path, "0"), "run-1")
    assert kept.load_before(1) is None
    for t in (1, 2, 4):  # the client sat round 3 out
        kept.save(t, {"m.shared.A": torch.full((2, 3), float(t))})
    assert kept.rounds() == [2, 4]  # only the two newest are kept
    assert kept.load_before(5)["m.shared.A"][0, 0].item() == 4.0
    assert kept.load_before(4)["m.shared.A"][0, 0].item() == 2.0  # a resume that redoes round 4 gets round 2's
    other_run = PrivateAdapters(site_folder(tmp_path, "0"), "run-2")
    assert other_run.load_before(5) is None  # another run sees nothing of this one
    assert not list(kept.folder.glob("*.tmp"))


@pytest.mark.parametrize("run_id, client", [("../x", "0"), ("run", "a/b"), ("run", ".."), ("", "0")])
def test_names_that_would_leave_the_folder_are_refused(tmp_path: Path, run_id: str, client: str) -> None:
    with pytest.raises(ValueError, match="cannot name a folder"):
        PrivateAdapters(site_folder(tmp_path, client), run_id)


def test_default_folder_follows_amole_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOLE_CACHE", str(tmp_path))
    assert PrivateAdapters(site_folder(None, "3"), "run").folder == tmp_path / "sites" / "3" / "private" / "run"
