"""`sagegen accuracy` through the reference CLI module: wiring, output, JSON, argument errors, light import."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sagegen.reference import cli
from sagegen.reference.inputs import DISTRIBUTIONS, make_inputs
from sagegen.reference.schemes import SCHEMES

ROOT = Path(__file__).resolve().parents[2]


def test_add_parser_wires_an_accuracy_subcommand():
    parser = argparse.ArgumentParser(prog="sagegen")
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    args = parser.parse_args(["accuracy", "--n", "64", "--schemes", "sage1,sage3-fp4", "--dists", "heavy"])
    assert args.func is cli.run and args.n == 64 and args.d == 128 and args.device == "cpu"
    assert args.schemes == ["sage1", "sage3-fp4"] and args.dists == ["heavy"]


def test_run_prints_the_tables_and_writes_json(tmp_path, capsys):
    out_json = tmp_path / "acc.json"
    rc = cli.main(["accuracy", "--n", "200", "--d", "64", "--schemes", "sage1,sage2pp-i8", "--dists",
                   "normal,zeros", "--long", "--json", str(out_json), "--causal"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "cosine similarity" in text and "relative L1" in text and "N=200 d=64" in text
    for name in ("sage1", "sage2pp-i8", "normal", "zeros"):
        assert name in text
    data = json.loads(out_json.read_text())
    assert data["config"]["n"] == 200 and data["config"]["causal"] is True
    assert len(data["results"]) == 4
    for r in data["results"]:
        assert 0.99 < r["cos"] <= 1 and 0 < r["rel_l1"] < 0.1 and r["rmse"] > 0 and r["max_abs"] > 0


@pytest.mark.parametrize("argv,msg", [
    (["--d", "300"], "head dim must be in 1..256"),
    (["--n", "0"], "positive integer"),
    (["--n", "abc"], "positive integer"),
    (["--schemes", "sage9"], "unknown scheme 'sage9'"),
    (["--dists", "uniform"], "unknown distribution 'uniform'"),
    (["--device", "tpu"], "invalid choice"),
])
def test_bad_arguments_exit_with_a_clear_message(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["accuracy", *argv])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_heads_must_be_a_multiple_of_kv_heads(capsys):
    assert cli.main(["accuracy", "--n", "32", "--heads", "3", "--kv-heads", "2"]) == 2
    assert "--kv-heads" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert cli.main(["accuracy", "--n", "32", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_help_lists_schemes_and_distributions(capsys):
    with pytest.raises(SystemExit):
        cli.main(["accuracy", "--help"])
    text = capsys.readouterr().out
    for name in [*SCHEMES, *DISTRIBUTIONS, "--device", "--json", "rel-L1"]:
        assert name in text


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, sagegen.reference.cli, sagegen.reference; assert 'torch' not in sys.modules, 'torch'"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


def test_distributions_are_deterministic_and_distinct():
    a = make_inputs("outliers", n=64, d=32, seed=5)
    b = make_inputs("outliers", n=64, d=32, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    k = a[1].float()
    assert (k.mean(dim=2).abs().amax() > 10)  # the channel offsets are there, shared by all tokens
    q, k, v = make_inputs("zeros", n=300, d=32, seed=5)
    assert not q[:, :, 128:128 + 75].any() and not k[:, :, ::7].any() and not v[..., 16].any()
    assert q[:, :, 1:7].all()  # but not everything
    q, k, v = make_inputs("zeros", n=1024, d=32, seed=5)
    assert not k[:, :, 128:256].any() and k[:, :, 260:266].all()  # (259 and 266 are multiples of 7)
    heavy = make_inputs("heavy", n=4096, d=32, seed=5)[0].float()
    assert heavy.abs().max() > 20  # heavy tails, where N(0, 1) would stay below ~5.5
    with pytest.raises(ValueError, match="dist"):
        make_inputs("uniform")
