"""Model selection on the original code bases' schedules: which epochs are evaluated, with which flip.

The original loops are restated below from their code (never from vdreid's), each over its 0-based ``epoch``:

* AGW ``train.py`` (mangye16/Cross-Modal-Re-ID-baseline; ZYK100/LLCM ``AGW/train.py`` is the same):
  ``for epoch in range(0, 81): train(epoch); if epoch > 0 and epoch % 2 == 0: test(epoch)`` (no flip in ``test``);
* CAJ ``ICCV21_CAJ/train_ext.py``: ``for epoch in range(0, 100)``, the same condition, no flip (``testa.py`` flips);
* DEEN ``DEEN/train.py`` (ZYK100/LLCM): ``for epoch in range(0, 151)``, ``if epoch > 0 and epoch % 1 == 0``, no flip
  (``test.py`` flips);
* VD ``mm01.py`` / ``regdb.py`` (the released code): ``for epoch in range(0, 600)``, after training ``if epoch <
  begin_test (100): continue; if not epoch % evaluate_freq (5) == 0: continue``, then evaluate.

Each tests after training the epoch, so the evaluation follows ``epoch + 1`` completed epochs: that count is what
vdreid's :class:`~vdreid.engine.hooks.EvalHook` sees as ``trainer.epoch + 1``. The shipped recipes (loaded with
:func:`vdreid.config.load_config`, options built as the command line builds them) drive the hook with a fake
trainer and must evaluate exactly the original's epochs, with the original's flip.
"""

from __future__ import annotations

import hashlib
import os.path as osp
from types import SimpleNamespace

import pytest
import yaml
from vdreid import builders
from vdreid.config import _to_dict, config_hash, load_config
from vdreid.engine.hooks import EvalHook
from vdreid.engine.options import TrainOptions
from vdreid.engine.run_dir import may_change_on_resume
from vdreid.errors import ConfigError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
NEW_KEYS = ("train.eval_phase", "train.eval_last", "train.selection_flip")


# ------------------------------------------------------------------------------------------------ the originals
def agw_loop(epochs: int = 81) -> list[int]:
    """AGW train.py: ``range(start_epoch, 81 - start_epoch)``, tests when ``epoch > 0 and epoch % 2 == 0``."""
    done = []
    for epoch in range(0, epochs):
        # train(epoch)
        if epoch > 0 and epoch % 2 == 0:
            done.append(epoch + 1)
    return done


def caj_loop(epochs: int = 100) -> list[int]:
    """CAJ train_ext.py: ``range(start_epoch, 100 - start_epoch)``, AGW's test condition."""
    return [epoch + 1 for epoch in range(0, epochs) if epoch > 0 and epoch % 2 == 0]


def deen_loop(epochs: int = 151) -> list[int]:
    """DEEN train.py: ``range(start_epoch, 151 - start_epoch)``, tests when ``epoch > 0 and epoch % 1 == 0``."""
    return [epoch + 1 for epoch in range(0, epochs) if epoch > 0 and epoch % 1 == 0]


def vd_loop(epochs: int = 600, begin_test: int = 100, evaluate_freq: int = 5) -> list[int]:
    """The released VD mm01.py / regdb.py."""
    done = []
    for epoch in range(0, epochs):
        # conv_scheduler.step(); trainer.train(epoch, ...); save_checkpoint(...)
        if epoch < begin_test:
            continue
        if not epoch % evaluate_freq == 0:
            continue
        done.append(epoch + 1)
    return done


def test_the_restated_loops():
    """What the restatements say, in words: AGW tests after its last epoch, CAJ and VD do not; none tests after the
    first epoch."""
    agw, caj, deen, vd = agw_loop(), caj_loop(), deen_loop(), vd_loop()
    assert agw[:3] == [3, 5, 7] and agw[-1] == 81 and len(agw) == 40
    assert caj[:2] == [3, 5] and caj[-1] == 99 and 100 not in caj and len(caj) == 49
    assert deen == list(range(2, 152))
    assert vd[:2] == [101, 106] and vd[-1] == 596 and 600 not in vd and len(vd) == 100


# ------------------------------------------------------------------------------------------------ vdreid's hook
def _report(rank1: float) -> SimpleNamespace:
    return SimpleNamespace(rank1=rank1, mean={"mAP": rank1 / 2, "mINP": rank1 / 4})


def _hook_for(cfg, test_flip: bool | None = None) -> EvalHook:
    """The EvalHook the trainer builds for ``cfg`` (options from vdreid.builders.engine_kwargs, as the CLI)."""
    kw = builders.engine_kwargs(cfg)
    opts: TrainOptions = kw["options"]
    test_flip = kw["evaluation"].flip if test_flip is None else test_flip
    flip = test_flip if opts.selection_flip is None else opts.selection_flip
    return EvalHook(lambda **k: None, opts.selection, opts.eval_freq, opts.eval_start, eval_phase=opts.eval_phase,
                    eval_last=opts.eval_last, flip=flip)


def drive(hook: EvalHook, max_epoch: int, val: bool = False) -> list[tuple[int, dict]]:
    """Run ``after_epoch`` for every epoch of a ``max_epoch``-epoch run on a fake trainer; returns the evaluate
    calls as (completed epochs, keyword arguments)."""
    calls: list[tuple[int, dict]] = []
    trainer = SimpleNamespace(epoch=0, max_epoch=max_epoch, epoch_stats={}, save_dir="",
                              datamanager=SimpleNamespace(val_protocols={"v": 1} if val else None),
                              dist=SimpleNamespace(is_main=True))

    def evaluate(**kwargs):
        calls.append((trainer.epoch + 1, kwargs))
        return {"target": _report(float(trainer.epoch))}

    hook.evaluate = evaluate
    hook.trainer = trainer
    hook.before_train()
    for trainer.epoch in range(max_epoch):
        trainer.epoch_stats = {}
        hook.after_epoch()
    return calls


def _cfg(name: str, *opts: str):
    return load_config(osp.join(REPO, "configs", name + ".yaml"), list(opts))


#: the documented override that gives the released VD code's selection (configs/official/sysu_all.yaml,
#: docs/vd-recipes.md, docs/reproduce.md)
VD_OVERRIDE = ("train.selection", "test", "train.eval_freq", "5", "train.eval_phase", "1", "train.eval_start", "101",
               "train.eval_last", "false")
AGW_OVERRIDE = ("train.selection", "test", "train.eval_freq", "2")

CASES = [
    ("methods/agw_sysu", AGW_OVERRIDE, agw_loop),
    ("methods/agw_regdb", AGW_OVERRIDE, agw_loop),
    ("methods/agw_sysu_indoor", AGW_OVERRIDE, agw_loop),
    ("llcm_agw", AGW_OVERRIDE, agw_loop),
    ("methods/caj_sysu", (), caj_loop),
    ("methods/caj_regdb", (), caj_loop),
    ("methods/caj_sysu_indoor", (), caj_loop),
    ("llcm_caj", (), caj_loop),
    ("methods/deen_sysu", (), deen_loop),
    ("methods/deen_regdb", (), deen_loop),
    ("llcm_deen", (), deen_loop),
    ("official/sysu_all", VD_OVERRIDE, vd_loop),
]


@pytest.mark.parametrize("name, opts, loop", CASES, ids=[c[0] for c in CASES])
def test_recipes_evaluate_the_originals_epochs_without_flip(name, opts, loop):
    cfg = _cfg(name, *opts)
    hook = _hook_for(cfg)
    calls = drive(hook, cfg.train.max_epoch)
    assert [d for d, _ in calls] == loop(cfg.train.max_epoch)
    assert all(kw == {"split": "test", "rerank": False, "flip": False} for _, kw in calls)
    # the results record the same epochs, the flip and the settings
    info = hook.schedule_info(cfg.train.max_epoch)
    assert info["selection_epochs"] == loop(cfg.train.max_epoch) and info["selection_flip"] is False
    assert "without flip" in info["selection_rule"] and "last epoch" not in info["selection_rule"]
    # the best is the first strict maximum (the originals' `cmc[0] > best_acc`): the fake rank-1 grows every epoch
    assert hook.best["epoch"] == loop(cfg.train.max_epoch)[-1]


def test_recipes_that_flip_at_test_time_select_without_flip_and_test_with_it():
    for name in ("methods/caj_sysu", "methods/deen_sysu", "llcm_caj", "llcm_deen"):
        cfg = _cfg(name)
        assert cfg.test.flip is True and cfg.train.selection_flip == "false", name
        assert builders.engine_kwargs(cfg)["options"].selection_flip is False
    # AGW tests without flip and selects without flip, also when a user turns test-time flip on
    cfg = _cfg("methods/agw_sysu", *AGW_OVERRIDE, "test.flip", "true")
    assert all(kw["flip"] is False for _, kw in drive(_hook_for(cfg), 9))


def test_documented_overrides_are_the_tested_ones():
    vd = " ".join(VD_OVERRIDE)
    for path in ("docs/vd-recipes.md", "docs/reproduce.md", "configs/official/sysu_all.yaml"):
        text = " ".join(open(osp.join(REPO, path), encoding="utf-8").read().replace("#", " ").split())
        assert vd in text, path
    assert " ".join(AGW_OVERRIDE) in open(osp.join(REPO, "configs/methods/agw_sysu.yaml"), encoding="utf-8").read()


# ------------------------------------------------------------------------------------------------ defaults
def _old_rule(selection: str, eval_freq: int, eval_start: int, max_epoch: int) -> list[int]:
    """The schedule before train.eval_phase / eval_last existed (torchreid's rule plus the last epoch)."""
    out = []
    for done in range(1, max_epoch + 1):
        periodic = eval_freq > 0 and done >= eval_start and done % eval_freq == 0
        if periodic or (done == max_epoch and selection != "final"):
            out.append(done)
    return out


DEFAULT_RECIPES = ["quickstart", "sysu_all", "regdb_v2t", "llcm_vd", "official/sysu_all", "methods/bnneck_sysu"]


@pytest.mark.parametrize("name", DEFAULT_RECIPES)
@pytest.mark.parametrize("opts", [(), ("train.selection", "test", "train.eval_freq", "5", "train.eval_start", "12"),
                                  ("train.selection", "val", "train.eval_freq", "3")])
def test_defaults_keep_the_earlier_schedule_and_flip(name, opts):
    cfg = _cfg(name, *opts, "train.max_epoch", "20")
    assert (cfg.train.eval_phase, cfg.train.eval_last, cfg.train.selection_flip) == (0, True, "auto")
    o = builders.engine_kwargs(cfg)["options"]
    assert (o.eval_phase, o.eval_last, o.selection_flip) == (0, True, None)
    for test_flip in (False, True):
        calls = drive(_hook_for(cfg, test_flip), 20, val=True)
        assert [d for d, _ in calls] == _old_rule(cfg.train.selection, cfg.train.eval_freq, cfg.train.eval_start, 20)
        assert all(kw["flip"] is test_flip for _, kw in calls)  # auto: the test's flip


def test_a_hook_without_flip_passes_none_and_evaluate_keeps_its_own():
    calls = drive(EvalHook(lambda **k: None, "test", 2, 0), 5)
    assert calls == [(2, {"split": "test", "rerank": False}), (4, {"split": "test", "rerank": False}),
                     (5, {"split": "test", "rerank": False})]


def test_config_hash_unchanged_at_the_defaults():
    """A setting's hash stays the one computed before the new keys existed (its leaderboard group), and changes
    when one of them is set."""
    for name in ("quickstart", "official/sysu_all", "methods/caj_sysu"):
        cfg = _cfg(name)
        d = _to_dict(cfg)
        for key in ("data.root", "data.save_dir", "data.workers", "train.print_freq", "model.resume",
                    "model.pretrained_path", "test.visrank", "test.visrank_topk", "test.batch_size", "test.evaluate",
                    "train.use_gpu", "train.threads", "test.threads"):
            sec, k = key.split(".")
            d[sec].pop(k, None)
        default = {"eval_phase": 0, "eval_last": True, "selection_flip": "auto"}
        for k, v in default.items():
            if d["train"][k] == v:
                d["train"].pop(k)
        text = yaml.safe_dump(d, sort_keys=True, default_flow_style=False)
        assert config_hash(cfg) == hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], name
    base = config_hash(_cfg("quickstart"))
    assert config_hash(_cfg("quickstart", "train.eval_last", "true")) == base
    for opts in (("train.eval_phase", "1"), ("train.eval_last", "false"), ("train.selection_flip", "false"),
                 ("train.selection_flip", "true")):
        assert config_hash(_cfg("quickstart", *opts)) != base, opts


# ------------------------------------------------------------------------------------------------ the last epoch
def test_eval_last_false_still_evaluates_the_last_epoch_when_nothing_else_is():
    # DEEN's recipe cut to one epoch: epoch 1 is never periodic (eval_start 2), so the last epoch is the candidate
    cfg = _cfg("methods/deen_sysu", "train.max_epoch", "1")
    assert [d for d, _ in drive(_hook_for(cfg), 1)] == [1]
    # CAJ cut to 4 epochs: periodic after 3 only, not after the 4th
    cfg = _cfg("methods/caj_sysu", "train.max_epoch", "4")
    assert [d for d, _ in drive(_hook_for(cfg), 4)] == [3] == caj_loop(4)
    # eval_last true adds the last epoch, as before; selection final never adds it
    cfg = _cfg("methods/caj_sysu", "train.max_epoch", "4", "train.eval_last", "true")
    hook = _hook_for(cfg)
    assert [d for d, _ in drive(hook, 4)] == [3, 4]
    assert "and after the last epoch (4)" in hook.schedule_info(4)["selection_rule"]
    hook = EvalHook(lambda **k: None, "final", 2, 0, eval_phase=1, eval_last=True)
    assert [d for d, _ in drive(hook, 4, val=True)] == [1, 3]


# ------------------------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("opts, key", [
    (("train.eval_phase", "-1"), "train.eval_phase"),
    (("train.eval_freq", "2", "train.eval_phase", "2"), "train.eval_phase"),
    (("train.eval_freq", "1", "train.eval_phase", "1"), "train.eval_phase"),
    (("train.selection_flip", "maybe"), "train.selection_flip"),
    (("train.eval_last", "maybe"), "train.eval_last"),
])
def test_bad_values_name_the_key(opts, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _cfg("quickstart", *opts)


def test_agw_recipe_refuses_a_frequency_its_phase_does_not_fit():
    with pytest.raises(ConfigError, match=r"train\.eval_phase.*below train\.eval_freq \(1\)"):
        _cfg("methods/agw_sysu", "train.selection", "test", "train.eval_freq", "1")
    _cfg("methods/agw_sysu", "train.selection", "test", "train.eval_freq", "1", "train.eval_phase", "0")


def test_options_and_hook_check_their_values():
    with pytest.raises(ConfigError, match="train.eval_phase"):
        TrainOptions(eval_freq=2, eval_phase=2)
    with pytest.raises(ConfigError, match="train.eval_phase"):
        TrainOptions(eval_phase=-1)
    with pytest.raises(ConfigError, match="train.selection_flip"):
        TrainOptions(selection_flip="yes")
    TrainOptions(eval_freq=0, eval_phase=1)  # inert while there is no periodic evaluation
    with pytest.raises(ValueError, match="eval_phase must be below eval_freq"):
        EvalHook(lambda **k: None, "test", 2, 0, eval_phase=2)
    hook = EvalHook(lambda **k: None, "test", 2, 0, eval_phase=1)
    hook.eval_freq = 1  # what VIEngine.run(eval_freq=1) does
    with pytest.raises(ValueError, match="eval_phase must be below eval_freq"):
        hook.check_schedule()


def test_the_new_keys_may_change_on_resume():
    assert all(may_change_on_resume(k) for k in NEW_KEYS)


# ------------------------------------------------------------------------------------------------ the trainer
def test_trainer_passes_the_selection_flip_to_the_evaluator_and_records_it(sysu_root, tmp_path, monkeypatch):
    """VIEngine wires train.selection_flip into the periodic evaluations (the evaluator extracts without flip),
    the final test keeps the test's flip, and the results JSON records the schedule."""
    import json

    from _engine_worker import build_engine
    from vdreid.engine import EvalOptions
    from vdreid.engine import evaluator as evaluator_mod

    eng = build_engine(sysu_root, selection="test", eval_freq=2, eval_start=2, eval_phase=1, eval_last=False,
                       selection_flip=False, eval_options=EvalOptions(flip=True))
    seen: list[bool] = []
    real = evaluator_mod.vdist.extract_features_sharded

    def spy(*args, **kwargs):
        seen.append(bool(kwargs.get("flip", False)))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluator_mod.vdist, "extract_features_sharded", spy)
    eng.run(save_dir=str(tmp_path / "run"), max_epoch=4)
    # epoch 3 only (query + gallery, without flip), then the final test (query + gallery, with flip)
    assert seen == [False, False, True, True]
    res = json.load(open(tmp_path / "run" / "results_sysu_mm01.json"))
    assert res["selected_on_test"] and res["selected_epoch"] == 3
    assert res["selection_epochs"] == [3] and res["selection_flip"] is False
    assert res["selection_schedule"] == {"eval_freq": 2, "eval_phase": 1, "eval_start": 2, "eval_last": False}
    # auto: the test's flip
    eng = build_engine(sysu_root, selection="test", eval_freq=2, eval_options=EvalOptions(flip=True))
    assert eng.eval_hook.flip is True
