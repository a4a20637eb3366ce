"""CLI behaviour: user mistakes end in one line on stderr and exit code 2, never a traceback."""

import json
import subprocess
import sys

import pytest

from bnnprune.cli import main
from bnnprune.machine import isa_flags, isa_label

TINY = [
    "--dataset",
    "synthetic",
    "--model",
    "small",
    "--width",
    "0.25",
    "--train-subset",
    "256",
    "--test-subset",
    "64",
    "--batch-size",
    "64",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "a"
    assert main(["train", *TINY, "--epochs", "2", "--track-last", "1", "-o", str(out)]) == 0
    return out


def _fails(argv, capsys, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("bnnprune: error:")
    assert "Traceback" not in err
    assert match in err, err
    return err


def test_train_eval_summary_flips(trained, capsys):
    assert (trained / "model.pt").is_file() and (trained / "flips.npz").is_file()
    assert main(["eval", str(trained / "model.pt"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == "synthetic" and 0.0 <= res["accuracy"] <= 1.0
    assert main(["summary", str(trained / "model.pt")]) == 0
    assert "bconv2" in capsys.readouterr().out
    assert main(["summary", "nin", "--dataset", "cifar10", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["bops"] > 0 and s["input_shape"] == [3, 32, 32]
    assert main(["flips", str(trained)]) == 0
    out = capsys.readouterr().out
    assert "bconv2" in out and "flip window" in out
    for f in ("flip_histograms.png", "flip_ratio.png", "flips.json"):
        assert (trained / "flips" / f).stat().st_size > 0


def test_prune_command_saves_a_loadable_smaller_model(trained, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["prune", str(trained / "model.pt"), "--target-bops", "0.4", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fewer" in text
    assert main(["eval", str(out / "model.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 500  # full synthetic test split


def test_prune_without_flip_data_says_how_to_record(tmp_path, capsys):
    out = tmp_path / "noflips"
    assert main(["train", *TINY, "--epochs", "1", "--track-last", "0", "-o", str(out)]) == 0
    capsys.readouterr()
    _fails(
        ["prune", str(out / "model.pt"), "--target-bops", "0.3", "--criterion", "wff", "-o",
         str(tmp_path / "p")],
        capsys,
        "--track-last",
    )


def test_real_process_exit_code_and_single_line():
    r = subprocess.run(
        [sys.executable, "-m", "bnnprune", "train", "--model", "nope", "-o", "/tmp/x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "unknown model 'nope'" in r.stderr


def test_export_and_bench(trained, tmp_path, capsys):
    bnn = tmp_path / "m.bnn"
    assert main(["export", str(trained / "model.pt"), "-o", str(bnn)]) == 0
    assert "smaller than the float32 weights" in capsys.readouterr().out
    assert bnn.stat().st_size > 0
    assert (
        main(
            [
                "export",
                str(trained / "model.pt"),
                "--format",
                "onnx",
                "-o",
                str(tmp_path / "m.onnx"),
            ]
        )
        == 0
    )
    assert (tmp_path / "m.onnx").stat().st_size > 0
    capsys.readouterr()
    out_json = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                str(bnn),
                "--compare",
                str(trained / "model.pt"),
                "--baseline",
                str(bnn),
                "--repeats",
                "3",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    res = json.loads(out_json.read_text())
    assert res["latency"]["speedup"] > 0 and res["pruned"]["bops_ratio"] == 1.0
    assert res["machine"]["isa"] == isa_flags()  # the speed figures name the CPU's flags
    assert f"({isa_label(isa_flags())})" in capsys.readouterr().out.splitlines()[0]
    junk = tmp_path / "junk.bnn"
    junk.write_bytes(b"\x00" * 100)
    _fails(["bench", str(junk)], capsys, "junk.bnn")
