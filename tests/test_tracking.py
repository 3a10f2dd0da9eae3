"""report_to: every metrics row reaches TensorBoard, W&B (offline) and MLflow under the same names
and steps, read back with each library's own reader (no mocks); a tracker failing mid-run is one
warning and training finishes; metrics.jsonl stays the source of truth."""

from __future__ import annotations

import glob
import json
import struct
import time
import warnings

import pytest
from helpers import random_records, tiny_model, tiny_tokenizer

from lrdpo_fast.train.config import TrainConfig
from lrdpo_fast.train.metrics import read_metrics
from lrdpo_fast.train.tracking import Backend, Tracker, check_report_to, numeric_metrics
from lrdpo_fast.train.trainer import Trainer

STEPS = 3


def _train(tmp_path, report_to, **kw):
    cfg = TrainConfig(
        learning_rate=1e-3,
        lr_scheduler="constant",
        pairs_per_step=2,
        max_steps=STEPS,
        output_dir=str(tmp_path / "run"),
        progress=False,
        plot=kw.pop("plot", False),
        save_final=False,
        device="cpu",
        report_to=report_to,
        **kw,
    )
    trainer = Trainer(tiny_model("llama", seed=0).train(), tiny_tokenizer(), random_records(6, seed=1), cfg)
    trainer.train()
    rows = read_metrics(cfg.output_dir)
    assert len(rows) == STEPS
    return cfg, trainer, rows


def _expected(rows) -> dict[str, dict[int, float]]:
    """name -> {step: value} of what every tracker must hold (the numbers of the JSONL rows)."""
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        for k, v in numeric_metrics(r).items():
            if k != "step":
                out.setdefault(k, {})[r["step"]] = v
    return out


def _assert_same(expected, got, rel=1e-6):
    assert set(expected) <= set(got), sorted(set(expected) - set(got))
    for name, by_step in expected.items():
        assert set(by_step) == set(got[name]), name
        for step, v in by_step.items():
            assert got[name][step] == pytest.approx(v, rel=rel, abs=1e-12), (name, step)


def test_tensorboard_event_files_hold_every_metric_and_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _, rows = _train(tmp_path, ["tensorboard"], plot=True)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    got = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    _assert_same(_expected(rows), got, rel=1e-5)  # TensorBoard stores float32
    assert "training_curves" in acc.Tags()["images"]


def _wandb_records(run_dir):
    """The records of an offline W&B run file (leveldb-style log: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(glob.glob(f"{run_dir}/*.wandb")[0], "rb").read()
    ident, _, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and n == 0:
            pos += left - 7
            continue
        buf += data[pos : pos + n]
        pos += n
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def test_wandb_offline_run_holds_every_metric_and_step(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg, _, rows = _train(tmp_path, ["wandb"])
    runs = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*"))
    assert len(runs) == 1  # offline without a key: nothing went to the network
    want = _expected(rows)
    # W&B's writer is its own process (wandb-core): once in CI its last records reached the file
    # just after run.finish() returned, so the file is read again until they are there (20 s)
    deadline = time.monotonic() + 20
    while True:
        got = _wandb_history(runs[0])
        if set(want) <= set(got) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    _assert_same(want, got)


def _wandb_history(run_dir) -> dict[str, dict[int, float]]:
    """name -> {step: value} of the history records of an offline W&B run."""
    got: dict[str, dict[int, float]] = {}
    for rec in _wandb_records(run_dir):
        if rec.WhichOneof("record_type") == "history":
            item = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            for k, v in item.items():
                if not k.startswith("_") and k != "step":
                    got.setdefault(k, {})[item["step"]] = v
    return got


def test_mlflow_file_store_holds_every_metric_and_step(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg, _, rows = _train(tmp_path, ["mlflow"])
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lrdpo-fast")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["beta"] == str(cfg.beta)
    expected = _expected(rows)
    got = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in expected}
    _assert_same(expected, got)


class _Failing(Backend):
    name = "failing"

    def __init__(self):
        self.calls = 0

    def log(self, metrics, step, axis):
        self.calls += 1
        if self.calls == 2:
            raise OSError("disk of the tracker is gone")


def test_a_tracker_failing_mid_run_is_one_warning_and_training_finishes(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = TrainConfig(
        learning_rate=1e-3,
        pairs_per_step=2,
        max_steps=STEPS,
        output_dir=str(tmp_path / "run"),
        progress=False,
        plot=False,
        save_final=False,
        device="cpu",
    )
    trainer = Trainer(tiny_model("llama", seed=0).train(), tiny_tokenizer(), random_records(6, seed=1), cfg)
    failing = _Failing()
    trainer.writer.tracker = Tracker([failing])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = trainer.train()
    ours = [w for w in caught if "report_to 'failing' failed" in str(w.message)]
    assert len(ours) == 1 and "disk of the tracker is gone" in str(ours[0].message)
    assert failing.calls == 2  # dropped after its failure
    assert len(history) == STEPS and len(read_metrics(cfg.output_dir)) == STEPS


@pytest.mark.parametrize(
    "value, msg",
    [("comet", "unknown tracker"), (["wandb", "wandb"], "twice"), ([1], "list of tracker names"), (3, "list")],
)
def test_bad_report_to_names_the_field(value, msg):
    with pytest.raises(ValueError, match=f"report_to.*{msg}"):
        TrainConfig(report_to=value)


def test_report_to_accepts_one_name_and_round_trips(tmp_path):
    assert TrainConfig(report_to="wandb").report_to == ["wandb"]
    assert check_report_to("x", None) == []
    cfg = TrainConfig(report_to=["tensorboard", "mlflow"], output_dir=str(tmp_path))
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_iterate_config_report_to_is_top_level_and_resumable():
    import lrdpo_fast as lf
    from lrdpo_fast.loop.run_record import RESUMABLE_CHANGES

    base = {"reward": {"callable": "x.y:z"}}
    assert lf.IterateConfig.from_dict(base).report_to == []
    cfg = lf.IterateConfig.from_dict({**base, "report_to": ["tensorboard"], "train": {"report_to": "mlflow"}})
    assert cfg.to_dict()["report_to"] == ["tensorboard"] and cfg.train.report_to == ["mlflow"]
    assert lf.IterateConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="IterateConfig: report_to"):
        lf.IterateConfig.from_dict({**base, "report_to": ["neptune"]})
    assert "report_to" in RESUMABLE_CHANGES  # adding a tracker on a resume is not another run


@pytest.mark.slow
def test_loop_report_to_gets_every_training_and_summary_row(tmp_path, tiny_model_dir):
    """One tracked run for the loop: each iteration's metrics rows at steps counted across
    iterations, every summary row as summary/<name> at its iteration, and the report plot."""
    pytest.importorskip("vllm")
    pytest.importorskip("tensorboard")
    from loop_runs import _cli, _write_run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _write_run(tmp_path, tiny_model_dir, eval_section=False)
    cfg.write_text(cfg.read_text() + "report_to: [tensorboard]\n")
    proc = _cli(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    got = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    expected: dict[str, dict[int, float]] = {}
    offset = 0
    for i in range(2):
        rows = read_metrics(run / f"iter_{i}" / "train")
        for r in rows:
            for k, v in numeric_metrics(r).items():
                if k != "step":
                    expected.setdefault(k, {})[r["step"] + offset] = v
        offset += rows[-1]["step"]
    summary = [json.loads(line) for line in (run / "summary.jsonl").read_text().splitlines()]
    assert len(summary) == 3
    for r in summary:
        for k, v in numeric_metrics(r, "summary/").items():
            if k != "summary/iteration":
                expected.setdefault(k, {})[r["iteration"]] = v
    _assert_same(expected, got, rel=1e-5)
    assert "report" in acc.Tags()["images"]
