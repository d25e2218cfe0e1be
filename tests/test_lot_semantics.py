"""`lot -I` counts pruning iterations as in Tartaglione 2022 ("The rise of the lottery heroes"):
I = 1 is the one-shot experiment, the same run as `imp --levels 2`."""
import json

import pytest

from training.__main__ import main
from training.engine.checkpoint import read_checkpoint


def tiny(tmp_path, data_dir):
    return ["--out", str(tmp_path), "--data-dir", data_dir, "--model", "mnist1d_mlp", "--mnist1d-samples", "500",
            "--train-for", "2ep", "--batch-size", "50", "--no-progress"]


def test_lot_one_iteration_is_one_shot_and_the_same_run_as_imp_two_levels(data_dir, tmp_path):
    assert main(["lot", "-R", "50", "-I", "1", "-k", "1ep", *tiny(tmp_path, data_dir)]) == 0
    (folder,) = tmp_path.glob("imp-*")
    levels = json.loads((folder / "summary.json").read_text())["levels"]
    assert [round(e["density"], 3) for e in levels] == [1.0, 0.5]  # dense, then the R = 50% ticket
    final = read_checkpoint(folder / "level_1" / "final.pt")
    assert final["meta"]["masked_weights"] == "zero"  # LOT: pruned weights are zero, not frozen
    assert all(bool((final["state_dict"][n][~m] == 0).all()) for n, m in final["mask"].items())
    stamp = (folder / "level_1" / "final.pt").stat().st_mtime_ns

    # the long form names the same experiment: same hash, same folder, nothing left to train
    assert main(["imp", "--keep", "50", "--levels", "2", "--rewind", "1ep", *tiny(tmp_path, data_dir)]) == 0
    assert [p.name for p in tmp_path.glob("imp-*")] == [folder.name]
    assert (folder / "level_1" / "final.pt").stat().st_mtime_ns == stamp
    assert not (folder / "level_2").exists()


def test_lot_help_is_its_own_and_explains_i(capsys):
    with pytest.raises(SystemExit) as done:
        main(["lot", "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: python -m training lot ")
    assert "-I I, --iterations I" in out and "I + 1 networks" in out and "I = 1" in out
    assert "-R R, --keep R" in out and "-k REWIND" in out
    assert 'Tartaglione 2022, "The rise of the lottery heroes"' in out


def test_lot_needs_at_least_one_iteration(data_dir, tmp_path, capsys):
    assert main(["lot", "-I", "0", *tiny(tmp_path, data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: -I (pruning iterations) must be at least 1") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())
