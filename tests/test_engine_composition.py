"""The trainer built from its collaborators: the Evaluator alone (torchreid's test keywords, results, ranked lists),
the RunState (banner lines, the record of written files), hooks holding a weak proxy, each periodic evaluation in
tensorboard once, torchreid's ImageDataManager refused, progress without carriage returns in files and pipes, the
deprecated VDEngine name, and one torch.load path in the package."""

from __future__ import annotations

import ast
import gc
import io
import json
import logging
import os
import os.path as osp
import warnings
import weakref

import pytest
import torch
from _engine_worker import HEIGHT, WIDTH, build_engine

PKG = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "extensions", "vdreid")


def _lines(path):
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def _tiny_model(num_classes: int):
    from vdreid.models import build_vd_net

    return build_vd_net("test_resnet", num_classes=num_classes, bottleneck_dims=(64, 32, 32))


def _vi_datamanager(root: str, source: str = "sysu_mm01", **dataset_kwargs):
    import vdreid  # noqa: F401
    from vdreid.data import CrossModalDataManager

    return CrossModalDataManager(root=root, sources=source, targets=source, height=HEIGHT, width=WIDTH, workers=0,
                                 batch_size_test=64, num_ids=4, num_instances=2, seed=0, use_gpu=False,
                                 dataset_kwargs=dataset_kwargs)


# ------------------------------------------------------------------------------------------------ data managers
def test_torchreid_datamanager_is_refused_at_construction(sysu_root):
    import torchreid
    import vdreid  # noqa: F401
    from vdreid.engine import Evaluator, VIEngine, build_optimizer
    from vdreid.errors import ConfigError
    from vdreid.losses import VDLoss, VDLossConfig

    dm = torchreid.data.ImageDataManager(root=sysu_root, sources="sysu_mm01", height=HEIGHT, width=WIDTH, workers=0,
                                         batch_size_test=64, use_gpu=False)
    model = _tiny_model(dm.num_train_pids)
    criterion = VDLoss(VDLossConfig.paper(), dm.num_train_pids)
    opt = build_optimizer(list(model.parameters()) + list(criterion.parameters()))
    with pytest.raises(ConfigError) as e:
        VIEngine(dm, model, opt, criterion)
    msg = str(e.value)
    for needle in ("vdreid.engine.VIEngine needs a vdreid.data.CrossModalDataManager", "ImageDataManager",
                   "'train_ir_camids'", "every image would train as visible", "'protocols'", "'ir_camids_of'",
                   "vdreid.builders.build_datamanager(cfg)"):
        assert needle in msg, (needle, msg)
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="'protocols'") as e:  # evaluation only: what evaluation needs
        VIEngine(dm, model)
    assert "train_ir_camids" not in str(e.value)
    with pytest.raises(ConfigError, match="Evaluator needs a vdreid.data.CrossModalDataManager"):
        Evaluator(dm, model)


# ------------------------------------------------------------------------------------------------ construction
def test_constructor_takes_collaborators_and_names_where_old_keywords_went(sysu_root):
    from vdreid.engine import EvalOptions, Evaluator, TrainOptions, VIEngine
    from vdreid.errors import ConfigError

    dm = _vi_datamanager(sysu_root)
    model = _tiny_model(dm.num_train_pids)
    with pytest.raises(TypeError) as e:
        VIEngine(dm, model, amp="bf16", flip=True)
    assert str(e.value) == ("VIEngine takes its options as objects now: amp -> options=TrainOptions(amp=...); "
                            "flip -> evaluator=Evaluator(datamanager, model, EvalOptions(flip=...))")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['colour'\]"):
        VIEngine(dm, model, colour="red")
    with pytest.raises(ConfigError, match="train.selection"):
        TrainOptions(selection="best")
    with pytest.raises(ConfigError, match="test.dist_metric"):
        EvalOptions(metric="hamming")
    with pytest.raises(ValueError, match="evaluator evaluates another model"):
        VIEngine(dm, model, evaluator=Evaluator(dm, _tiny_model(dm.num_train_pids)))
    ev = Evaluator(dm, model, EvalOptions(feature_mode="shared_z"), provenance={"x": 1})
    eng = VIEngine(dm, model, evaluator=ev)
    assert eng.evaluator is ev and eng.provenance is ev.provenance and model.feature_mode == "shared_z"
    assert eng.options == TrainOptions() and eng.run_state.provenance is ev.provenance


def test_vdengine_is_a_deprecated_alias():
    import vdreid.engine
    import vdreid.engine.trainer
    from vdreid.engine import VIEngine

    for mod in (vdreid.engine, vdreid.engine.trainer):
        with pytest.warns(DeprecationWarning, match="VDEngine is deprecated: use vdreid.engine.VIEngine"):
            assert mod.VDEngine is VIEngine
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns nothing
        assert vdreid.engine.VIEngine is VIEngine
    assert "VDEngine" not in vdreid.engine.__all__


def test_hooks_hold_a_weak_proxy_and_do_not_keep_the_trainer_alive(sysu_root, tmp_path):
    from vdreid.engine import HookBase

    class Probe(HookBase):
        epochs: list[int] = []

        def after_epoch(self) -> None:
            self.epochs.append(self.trainer.epoch + 1)

    probe = Probe()
    eng = build_engine(sysu_root, hooks=[probe])
    assert all(isinstance(h.trainer, weakref.ProxyType) for h in eng.hooks)
    eng.run(save_dir=str(tmp_path / "run"), max_epoch=1)
    assert probe.epochs == [1]  # the proxy reads the trainer's state while it lives
    ref = weakref.ref(eng)
    hooks = list(eng.hooks)
    gc.collect()
    gc.disable()
    try:
        del eng
        assert ref() is None  # freed by reference counting alone: no trainer <-> hook cycle
    finally:
        gc.enable()
    with pytest.raises(ReferenceError):
        _ = hooks[0].trainer.epoch


# ------------------------------------------------------------------------------------------------ tensorboard
def _scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for name in sorted(f for f in os.listdir(folder) if f.startswith("events.out.tfevents")):
        acc = EventAccumulator(osp.join(folder, name), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_each_periodic_evaluation_is_written_to_tensorboard_once(sysu_root, tmp_path):
    save = str(tmp_path / "run")
    eng = build_engine(sysu_root, val=True, selection="val", eval_freq=1)
    eng.run(save_dir=save, max_epoch=2)
    sc = _scalars(save)
    log = _lines(osp.join(save, "train_log.jsonl"))
    res = json.load(open(osp.join(save, "results_sysu_mm01.json")))
    rank1_tags = sorted(t for t in sc if "rank1" in t.lower())
    assert rank1_tags == ["final/sysu_mm01/rank1", "val/sysu_mm01/rank1"], rank1_tags  # one scheme, no Val/ Test/
    for key in ("rank1", "mAP", "mINP"):  # one point per evaluation, equal to the train log's value
        points = sc[f"val/sysu_mm01/{key}"]
        assert [s for s, _ in points] == [1, 2]
        assert [v for _, v in points] == pytest.approx([r[f"val/sysu_mm01/{key}"] for r in log], abs=1e-4)
    final = sc["final/sysu_mm01/rank1"]
    assert len(final) == 1 and final[0][0] == 2 and final[0][1] == pytest.approx(res["mean"]["R1"], abs=1e-4)
    assert [s for s, _ in sc["Epoch/total"]] == [1, 2]


# ------------------------------------------------------------------------------------------------ written files
def test_outputs_list_every_file_the_run_wrote(sysu_root, tmp_path):
    save = str(tmp_path / "run")
    from vdreid.config import get_default_config, to_dict

    eng = build_engine(sysu_root, val=True, selection="val", eval_freq=1, checkpoint_every=1)
    eng.provenance["config"] = to_dict(get_default_config())  # as vdreid.builders.provenance stores it
    eng.run(save_dir=save, max_epoch=2, visrank=True, visrank_topk=3)
    kinds = dict(eng.outputs.items())
    on_disk = {osp.join(save, n) for n in os.listdir(save)}
    assert set(kinds) == on_disk, (sorted(set(kinds) ^ on_disk))
    by_kind: dict[str, set[str]] = {}
    for path, kind in kinds.items():
        by_kind.setdefault(kind, set()).add(osp.basename(path))
    assert by_kind["checkpoint"] == {"latest.pth", "best_val.pth", "epoch_001.pth", "epoch_002.pth"}
    assert by_kind["config"] == {"config.yaml"} and by_kind["train log"] == {"train_log.jsonl"}
    assert by_kind["results"] == {"results_sysu_mm01.json"} and by_kind["pictures"] == {"ranked_sysu_mm01"}
    assert len(by_kind["tensorboard"]) == 1 and next(iter(by_kind["tensorboard"])).startswith("events.out.tfevents")
    assert list(eng.outputs)[0].endswith("config.yaml")  # in the order of the first write
    assert eng.outputs.existing() == eng.outputs.items()


# ------------------------------------------------------------------------------------------------ the banner
def test_banner_takes_extra_lines(sysu_root, tmp_path, caplog):
    eng = build_engine(sysu_root)
    eng.run_state.banner_lines.append("runtime: 1 thread, flush denormals on")
    with caplog.at_level(logging.INFO, logger="vdreid.engine.run_state"):
        eng.run(save_dir=str(tmp_path / "run"), max_epoch=1)
    banner = [r.getMessage() for r in caplog.records if r.name == "vdreid.engine.run_state"]
    assert banner[0] == "=> training plan" and banner[-1] == "   runtime: 1 thread, flush denormals on"
    assert any("checkpoints: latest.pth" in b for b in banner[:-1])
    assert eng.provenance["plan"]["notes"] == ["runtime: 1 thread, flush denormals on"]


# ------------------------------------------------------------------------------------------------ the evaluator
def test_evaluator_alone_honours_or_refuses_torchreid_keywords(sysu_root, tmp_path, caplog):
    from vdreid.engine import EvalOptions, Evaluator
    from vdreid.errors import ConfigError

    dm = _vi_datamanager(sysu_root)
    torch.manual_seed(0)
    ev = Evaluator(dm, _tiny_model(dm.num_train_pids), EvalOptions(), provenance={"method": "vd", "seed": 3})
    with pytest.raises(ConfigError, match="use_metric_cuhk03=True is CUHK03's metric"):
        ev.test(use_metric_cuhk03=True)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['fancy'\]"):
        ev.test(fancy=True)
    with pytest.raises(ConfigError, match="dist_metric must be 'cosine' or 'euclidean'"):
        ev.test(dist_metric="hamming")
    with caplog.at_level(logging.INFO, logger="vdreid.engine.evaluator"):
        r_euc = ev.test(save_dir=str(tmp_path / "euc"), dist_metric="euclidean", ranks=[1, 5],
                        selection_info={"selection": "checkpoint", "selected_epoch": 7})
    res = json.load(open(tmp_path / "euc" / "results_sysu_mm01.json"))
    assert res["metric"] == "euclidean" and res["selection"] == "checkpoint" and res["selected_epoch"] == 7
    assert res["method"] == "vd" and res["seed"] == 3 and res["eval_amp"] == "none" and res["world_size"] == 1
    assert res["mean"]["R1"] == pytest.approx(r_euc)
    assert any(r.getMessage().startswith("CMC sysu_mm01: rank-1 ") and "rank-5" in r.getMessage()
               for r in caplog.records)
    assert osp.join(str(tmp_path / "euc"), "results_sysu_mm01.json") in ev.written
    # normalize_feature=True ranks unit vectors: the cosine ranking, recorded as such
    ev.test(save_dir=str(tmp_path / "norm"), dist_metric="euclidean", normalize_feature=True)
    assert json.load(open(tmp_path / "norm" / "results_sysu_mm01.json"))["metric"] == "cosine"
    with pytest.raises(ValueError, match="split must be 'test' or 'val'"):
        ev.evaluate("train")
    with pytest.raises(ConfigError, match="no validation protocol"):
        ev.evaluate("val")


def test_evaluator_refuses_an_unwritable_results_folder_before_extracting(sysu_root, tmp_path):
    from vdreid.engine import Evaluator
    from vdreid.errors import RunDirError

    dm = _vi_datamanager(sysu_root)
    ev = Evaluator(dm, _tiny_model(dm.num_train_pids))
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="a file of that name is in the way"):
        ev.test(save_dir=str(tmp_path / "file"))
    assert ev.last_reports == {}  # nothing was extracted


@pytest.fixture(scope="module")
def llcm_root(tmp_path_factory) -> str:
    from vdreid.data.synthetic import make_llcm

    root = tmp_path_factory.mktemp("llcm_root")
    make_llcm(str(root), preset="tiny", seed=0)
    return str(root)


def test_ranked_lists_are_the_first_queries_of_trial_0_and_say_how_many(sysu_root, llcm_root, tmp_path, caplog):
    from vdreid.engine import Evaluator

    for root, source, kw in ((sysu_root, "sysu_mm01", {}), (llcm_root, "llcm", {"direction": "vis2ir_swapped"})):
        dm = _vi_datamanager(root, source, **kw)
        protocol = dm.protocols[source]
        in_trial = len(protocol.query_of(0))
        ev = Evaluator(dm, _tiny_model(dm.num_train_pids))
        out = str(tmp_path / source)
        with caplog.at_level(logging.INFO, logger="vdreid.engine.evaluator"):
            caplog.clear()
            ev.test(save_dir=out, visrank=True, visrank_topk=3)
        pictures = sorted(os.listdir(osp.join(out, f"ranked_{source}")))
        # the cap (24) or every query of trial 0, each picture named after its own query
        expected = min(24, in_trial)
        assert len(pictures) == expected
        names = [osp.basename(dm.test_dataset[source]["query"][i][0]) for i in protocol.query_of(0)[:expected]]
        assert [p.split("_", 3)[3] for p in pictures] == [osp.splitext(n)[0] + ".jpg" for n in names]
        line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith(f"ranked lists of {source}"))
        assert (f"{expected} pictures (top-3 each) for {expected} of the {in_trial} queries of trial 0 (at most 24; "
                f"the target has {len(protocol.query)} queries)") in line
        if source == "llcm":  # LLCM's swapped variant draws its queries per trial: trial 0 holds part of them
            assert in_trial < len(protocol.query)
        ranked = ev.write_ranked_lists(source, str(tmp_path / f"{source}_5"), topk=2, max_queries=5)
        assert len(os.listdir(ranked)) == min(5, in_trial)
        every = ev.write_ranked_lists(source, str(tmp_path / f"{source}_all"), topk=2, max_queries=None)
        assert len(os.listdir(every)) == in_trial


# ------------------------------------------------------------------------------------------------ progress
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_log_lines_elsewhere(caplog):
    from vdreid.evaluation.progress import Progress, is_terminal, iterate

    assert is_terminal(_Terminal()) and not is_terminal(io.StringIO()) and not is_terminal(object())
    tty = _Terminal()
    assert list(iterate(range(5), "frames", stream=tty)) == list(range(5))
    assert "\r" in tty.getvalue() and "frames" in tty.getvalue()
    pipe = io.StringIO()
    with caplog.at_level(logging.INFO, logger="vdreid.evaluation.progress"):
        assert list(iterate(range(3), "quiet", stream=pipe, interval_s=0.0)) == [0, 1, 2]
        assert list(iterate(range(3), "short", stream=pipe)) == [0, 1, 2]  # shorter than the interval: silent
    assert pipe.getvalue() == ""
    msgs = [r.getMessage() for r in caplog.records]
    assert [m.split(" (")[0] for m in msgs] == ["quiet: 1/3 it", "quiet: 2/3 it", "quiet: 3/3 it"]
    off = _Terminal()
    with Progress(3, "off", stream=off, enabled=False) as p:
        p.update(3)
    assert off.getvalue() == ""


def test_training_progress_in_a_file_has_no_carriage_returns(sysu_root, tmp_path, capfd, caplog):
    from vdreid.engine.hooks import ProgressHook

    eng = build_engine(sysu_root, progress=True, print_freq=2)
    assert not os.isatty(2) or pytest.skip("stderr is a terminal here")
    with caplog.at_level(logging.INFO, logger="vdreid.engine.hooks"):
        eng.run(save_dir=str(tmp_path / "run"), max_epoch=1)
    err = capfd.readouterr().err
    assert "\r" not in err  # no tqdm frames: neither the training bar nor the extraction bars
    n = len(eng.train_loader)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch [1/1][")]
    assert [ln.split("]")[1] for ln in lines] == [f"[{i}/{n}" for i in range(2, n + 1, 2)]
    assert all("total " in ln and "img/s" in ln for ln in lines)
    # on a terminal the same hook draws a bar (and logs no lines)
    tty = _Terminal()
    eng2 = build_engine(sysu_root, progress=True, print_freq=2)
    eng2.progress_hook.stream = tty
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vdreid.engine.hooks"):
        eng2.run(save_dir=str(tmp_path / "run2"), max_epoch=1)
    assert "\r" in tty.getvalue() and "epoch 1/1" in tty.getvalue()
    assert not [r for r in caplog.records if r.getMessage().startswith("epoch [1/1][")]
    assert isinstance(eng2.progress_hook, ProgressHook)


# ------------------------------------------------------------------------------------------------ one loader
def test_one_torch_load_path_in_the_package():
    """Every checkpoint and weights file is read through vdreid.compat.load_checkpoint (weights_only=True, errors that
    name the file): no other module calls torch.load."""
    calls = []
    for dirpath, _, files in os.walk(PKG):
        for fn in files:
            if not fn.endswith(".py"):
                continue
            path = osp.join(dirpath, fn)
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                    calls.append(f"{osp.relpath(path, PKG)}:{node.lineno}")
    assert [c.split(":")[0] for c in calls] == ["compat.py"], calls
