"""CrossModalIdentitySampler: batch composition, replacement rule, determinism, epochs, ranks, errors."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import pytest
import torch
from vdreid.data import CrossModalIdentitySampler
from vdreid.errors import ConfigError

IR = frozenset({2, 5})


def items(spec: dict[int, tuple[int, int]]) -> list[tuple[str, int, int, int]]:
    """pid -> (#visible, #infrared) images; visible ones alternate cams 0/3, infrared 2/5 (SYSU camids)."""
    out = []
    for pid, (nv, ni) in spec.items():
        out += [(f"v{pid}_{k}", pid, (0, 3)[k % 2], 0) for k in range(nv)]
        out += [(f"i{pid}_{k}", pid, (2, 5)[k % 2], 0) for k in range(ni)]
    return out


DATA = items({p: (3 + p % 4, 2 + p % 3) for p in range(12)})


def batches(sampler, data=DATA):
    idx = list(sampler)
    b = sampler.batch_size
    assert len(idx) == len(sampler) and len(idx) % b == 0
    return [[data[i] for i in idx[k : k + b]] for k in range(0, len(idx), b)]


@pytest.mark.parametrize("P, K", [(4, 2), (3, 4)])
def test_batch_composition(P, K):
    s = CrossModalIdentitySampler(DATA, num_ids=P, num_instances=K, ir_camids=IR, seed=1)
    assert s.batch_size == P * 2 * K
    for batch in batches(s):
        pids = [it[1] for it in batch]
        assert len(set(pids)) == P
        for j in range(P):  # identity-major: K visible then K infrared of one identity
            block = batch[j * 2 * K : (j + 1) * 2 * K]
            assert len({it[1] for it in block}) == 1
            assert all(it[2] not in IR for it in block[:K]) and all(it[2] in IR for it in block[K:])


def test_replacement_only_when_too_few():
    data = items({0: (1, 5), 1: (5, 1), 2: (4, 4), 3: (2, 2)})
    s = CrossModalIdentitySampler(data, num_ids=2, num_instances=2, ir_camids=IR, seed=0, num_batches=40)
    saw_repeat = set()
    for batch in batches(s, data):
        for j in range(2):
            block = batch[j * 4 : (j + 1) * 4]
            pid = block[0][1]
            for half, n_avail in ((block[:2], (1, 5, 4, 2)[pid]), (block[2:], (5, 1, 4, 2)[pid])):
                paths = [it[0] for it in half]
                if n_avail >= 2:
                    assert len(set(paths)) == 2, f"pid {pid} has {n_avail} images but one was drawn twice"
                else:
                    assert len(set(paths)) == 1
                    saw_repeat.add(pid)
    assert saw_repeat == {0, 1}


def test_epoch_covers_identities_evenly():
    s = CrossModalIdentitySampler(DATA, num_ids=4, num_instances=2, ir_camids=IR, num_batches=6)
    count = Counter(b[0][1] for batch in batches(s) for b in [batch[k : k + 4] for k in range(0, 16, 4)])
    assert set(count.values()) == {2}, count  # 6 batches x 4 ids = two full passes over the 12 identities


def test_default_epoch_length():
    n_v = sum(1 for it in DATA if it[2] not in IR)
    n_i = len(DATA) - n_v
    s = CrossModalIdentitySampler(DATA, num_ids=4, num_instances=2, ir_camids=IR)
    assert s.num_batches == math.ceil(max(n_v, n_i) / 8)
    s2 = CrossModalIdentitySampler(DATA, num_ids=2, num_instances=2, ir_camids=IR, world_size=2, rank=1)
    assert s2.num_batches == math.ceil(max(n_v, n_i) / 8)


def test_determinism_and_epochs():
    def make(seed=0):
        return CrossModalIdentitySampler(DATA, num_ids=4, num_instances=2, ir_camids=IR, seed=seed)

    a, b = make(), make()
    assert list(a) == list(b)
    assert list(make(1)) != list(make(0))
    # without set_epoch the epoch advances after each pass; with it, a pass is reproducible
    s = make()
    e0, e1 = list(s), list(s)
    assert e0 != e1
    s.set_epoch(0)
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) == e1
    t = make()
    t.set_epoch(1)
    assert list(t) == e1


def test_distributed_ranks_get_distinct_identities():
    kw = dict(num_ids=3, num_instances=2, ir_camids=IR, seed=5, world_size=2)
    r0 = CrossModalIdentitySampler(DATA, rank=0, **kw)
    r1 = CrossModalIdentitySampler(DATA, rank=1, **kw)
    assert len(r0) == len(r1)
    for b0, b1 in zip(batches(r0), batches(r1)):
        assert not {it[1] for it in b0} & {it[1] for it in b1}
        assert len({it[1] for it in b0}) == 3
    # rank 0 of a 2-rank run is not the single-process stream
    single = CrossModalIdentitySampler(DATA, num_ids=3, num_instances=2, ir_camids=IR, seed=5)
    assert list(single) != list(r0)


def test_one_modality_identities_are_dropped_with_a_warning():
    data = items({0: (3, 3), 1: (3, 0), 2: (3, 3), 3: (0, 2), 4: (2, 2)})
    with pytest.warns(UserWarning, match=r"2 identities have images of one modality only.*\[1, 3\]"):
        s = CrossModalIdentitySampler(data, num_ids=2, num_instances=1, ir_camids=IR)
    assert {data[i][1] for i in s} <= {0, 2, 4}


def test_errors():
    with pytest.raises(ValueError, match="ir_camids is empty"):
        CrossModalIdentitySampler(DATA, ir_camids=())
    with pytest.raises(ValueError, match="12 identities .* num_ids \\* world_size = 16"):
        CrossModalIdentitySampler(DATA, num_ids=8, ir_camids=IR, world_size=2)
    with pytest.raises(ValueError, match="num_instances"):
        CrossModalIdentitySampler(DATA, num_instances=0, ir_camids=IR)
    with pytest.raises(ValueError, match="rank"):
        CrossModalIdentitySampler(DATA, num_ids=2, ir_camids=IR, rank=2, world_size=2)
    with pytest.raises(ValueError, match="num_batches"):
        CrossModalIdentitySampler(DATA, num_ids=2, ir_camids=IR, num_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CrossModalIdentitySampler(DATA, num_ids=2, ir_camids=IR)


def test_dataloader_blocks_are_batches():
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(DATA)

        def __getitem__(self, i):
            return {"pid": DATA[i][1], "camid": DATA[i][2]}

    s = CrossModalIdentitySampler(DATA, num_ids=4, num_instances=2, ir_camids=IR)
    dl = torch.utils.data.DataLoader(Items(), batch_size=s.batch_size, sampler=s, drop_last=True)
    assert len(dl) == s.num_batches
    for batch in dl:
        assert batch["pid"].unique().numel() == 4
        assert int(torch.isin(batch["camid"], torch.tensor(sorted(IR))).sum()) == 8


def test_is_infrared_and_camera_maps():
    import numpy as np
    from vdreid.data.modality import (
        REGDB_CAM_MODALITY,
        REGDB_IR_CAMIDS,
        SYSU_CAM_MODALITY,
        SYSU_IR_CAMIDS,
        is_infrared,
        modality_of,
    )

    cams = [0, 1, 2, 3, 4, 5, 2]
    expected = [c + 1 in (3, 6) for c in cams]  # SYSU IR cameras are cam3 and cam6 (1-based, spec 1.1)
    for given in (cams, np.array(cams), torch.tensor(cams), torch.tensor(cams, dtype=torch.int32)):
        out = is_infrared(given, SYSU_IR_CAMIDS)
        assert out.dtype == torch.bool and out.tolist() == expected
    assert is_infrared(torch.tensor([[0, 1], [1, 0]]), REGDB_IR_CAMIDS).tolist() == [[False, True], [True, False]]
    assert is_infrared([], SYSU_IR_CAMIDS).numel() == 0
    assert not is_infrared([0, 1], ()).any()
    vis, ir = "visible", "infrared"
    assert [SYSU_CAM_MODALITY[c] for c in range(6)] == [vis, vis, ir, vis, vis, ir]
    assert REGDB_CAM_MODALITY == {0: "visible", 1: "infrared"}
    assert modality_of(5, SYSU_IR_CAMIDS) == "infrared" and modality_of(3, SYSU_IR_CAMIDS) == "visible"


# ------------------------------------------------------------------------------------------ epoch definitions
def _real_count_items(n_ids: int, n_vis: int, n_ir: int, ir_cam: int = 2, vis_cam: int = 0) -> list[tuple]:
    """In-memory items with a dataset's real training counts (no images): images spread as evenly as possible."""
    out = []
    for modality_cam, total in ((vis_cam, n_vis), (ir_cam, n_ir)):
        for pid in range(n_ids):
            k = total // n_ids + (1 if pid < total % n_ids else 0)
            out += [(f"{modality_cam}_{pid}_{j}", pid, modality_cam, 0) for j in range(k)]
    return out


def _released_vd_iterations(n_ids: int, batch_size: int, num_instances_vd: int) -> int:
    """The released VD code's epoch, written out: CamRandomIdentitySampler yields num_instances_vd indices for each
    of the n_ids identities (one randperm pass), a DataLoader(batch_size, drop_last=True) cuts them."""
    stream = list(range(n_ids * num_instances_vd))
    loader = torch.utils.data.DataLoader(stream, batch_size=batch_size, drop_last=True)
    return sum(1 for _ in loader)


def _agw_iterations(n_vis: int, n_ir: int, batch_ids: int, num_pos: int) -> int:
    """AGW's epoch, written out: IdentitySampler.__iter__ yields (int(N/(B*P))+1)*B*P indices (N = max(#vis, #ir));
    the DataLoader has batch_size B*P and drop_last=True (agw.md A.3)."""
    n = max(n_vis, n_ir)
    stream = list(range((int(n / (batch_ids * num_pos)) + 1) * batch_ids * num_pos))
    loader = torch.utils.data.DataLoader(stream, batch_size=batch_ids * num_pos, drop_last=True)
    return sum(1 for _ in loader)


def _recipe_sampler(path: str) -> dict:
    import os.path as osp

    from vdreid.config import read_yaml_with_bases

    merged: dict = {}
    for _, data in read_yaml_with_bases(osp.join(osp.dirname(__file__), "..", "configs", path)):
        merged.update(data.get("sampler", {}))
    return merged


SYSU_TRAIN = dict(n_ids=395, n_vis=22258, n_ir=11909)  # protocol counts of SYSU-MM01 train+val (395 ids)


def test_official_sysu_epoch_is_24_iterations():
    sam = _recipe_sampler("official/sysu_all.yaml")
    P, K = sam["num_ids"], sam["num_instances"]
    assert (P, K) == (16, 4)  # batch 128 = 16 ids x (4 visible + 4 infrared); mm01.py: -b 128 --num-instances 8
    assert sam.get("epoch", "identities") == "identities"
    data = _real_count_items(**SYSU_TRAIN, ir_cam=2)
    s = CrossModalIdentitySampler(data, num_ids=P, num_instances=K, ir_camids=IR, seed=1,
                                  epoch_definition="identities")
    expected = _released_vd_iterations(395, batch_size=128, num_instances_vd=8)
    assert expected == 24 and s.num_batches == 24 and len(s) == 24 * 128
    assert (s.num_visible, s.num_infrared, s.num_identities) == (22258, 11909, 395)
    # each identity at most once per epoch; 395 - 24 * 16 = 11 identities are left out, as drop_last does there
    pids = [data[i][1] for i in s][:: 2 * K]
    assert len(pids) == 24 * 16 and len(set(pids)) == 24 * 16


def test_official_regdb_epoch_is_25_iterations():
    # RegDB (released regdb.py): 206 training ids per split (reid/datasets/RegDB.py: trainval = labels 0..205), 10
    # visible (cam 0) + 10 thermal (cam 2) images each; -b 64 --num-instances 8 -> 8 ids x (4 + 4).
    # len(sampler) = 206 * 8 = 1648, DataLoader(64, drop_last=True) -> 1648 // 64 = 25 batches (25.75 cut to 25).
    sam = _recipe_sampler("official/regdb_v2t.yaml")
    P, K = sam["num_ids"], sam["num_instances"]
    assert (P, K) == (8, 4)
    data = _real_count_items(206, 2060, 2060, ir_cam=1)
    s = CrossModalIdentitySampler(data, num_ids=P, num_instances=K, ir_camids={1}, epoch_definition="identities")
    assert _released_vd_iterations(206, batch_size=64, num_instances_vd=8) == 25
    assert s.num_batches == 25
    assert _recipe_sampler("official/regdb_t2v.yaml")["num_ids"] == P


def test_agw_sysu_epoch_is_696_iterations():
    # agw.md A.3: batch 8 ids x (4 VIS + 4 IR), int(N/32)+1 = 696 iterations for SYSU's N = 22,258
    data = _real_count_items(**SYSU_TRAIN, ir_cam=5)
    s = CrossModalIdentitySampler(data, num_ids=8, num_instances=4, ir_camids=IR, epoch_definition="images")
    assert _agw_iterations(22258, 11909, 8, 4) == 696
    assert s.num_batches == 696


@pytest.mark.parametrize("n_vis, n_ir", [(64, 40), (63, 40), (65, 70), (40, 64)])
def test_images_epoch_matches_agw_count_also_when_divisible(n_vis, n_ir):
    # N divisible by B*P: AGW still runs int(N/(B*P)) + 1 batches (one more than ceil)
    data = _real_count_items(6, n_vis, n_ir)
    s = CrossModalIdentitySampler(data, num_ids=2, num_instances=4, ir_camids=IR)
    assert s.num_batches == _agw_iterations(n_vis, n_ir, 2, 4)
    s2 = CrossModalIdentitySampler(data, num_ids=1, num_instances=4, ir_camids=IR, world_size=2, rank=1)
    assert s2.num_batches == int(max(n_vis, n_ir) / 8) + 1  # per global step 2 ranks x 1 id x 4 images


def test_identities_epoch_under_ddp_and_explicit_count():
    from vdreid.data.sampler import iterations_per_epoch

    kw = dict(num_ids=2, num_instances=2, ir_camids=IR, epoch_definition="identities", world_size=2)
    r0, r1 = (CrossModalIdentitySampler(DATA, rank=r, **kw) for r in (0, 1))
    assert r0.num_batches == r1.num_batches == 12 // 4
    seen = [data_pid for s in (r0, r1) for data_pid in (DATA[i][1] for i in list(s)[::4])]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 12  # all 12 ids exactly once over both ranks
    s = CrossModalIdentitySampler(DATA, num_ids=4, num_instances=2, ir_camids=IR, epoch_definition="7")
    assert s.num_batches == 7 and len(list(s)) == 7 * 16
    assert iterations_per_epoch(5, 395, 1, 1, 16, 4) == 5
    assert iterations_per_epoch("identities", 395, 22258, 11909, 16, 4, world_size=2) == 12


def test_epoch_definition_errors():
    from vdreid.errors import ConfigError

    for bad in ("epochs", 0, -3, "0", True, 2.5, None):
        with pytest.raises(ConfigError, match="expected 'images'.*'identities'"):
            CrossModalIdentitySampler(DATA, num_ids=2, ir_camids=IR, epoch_definition=bad)
    with pytest.raises(ConfigError, match="give one of them"):
        CrossModalIdentitySampler(DATA, num_ids=2, ir_camids=IR, num_batches=3, epoch_definition="identities")
    assert CrossModalIdentitySampler(DATA, num_ids=2, ir_camids=IR, num_batches=3, epoch_definition=3).num_batches == 3


# ---------------------------------------------------------------------------------- (index, seed) pairs
def test_sample_seeds_pairs_keep_the_index_stream():
    kw = dict(num_ids=4, num_instances=2, ir_camids=IR, seed=3)
    plain = CrossModalIdentitySampler(DATA, **kw)
    paired = CrossModalIdentitySampler(DATA, sample_seeds=True, **kw)
    for _ in range(2):  # two epochs
        pairs = list(paired)
        assert [i for i, _ in pairs] == list(plain)
        assert all(isinstance(s, int) and 0 <= s < 2**32 for _, s in pairs)
        assert len({s for _, s in pairs}) == len(pairs)  # 2**32 range: no collision among a few dozen
    paired.set_epoch(0)
    e0 = [s for _, s in paired]
    paired.set_epoch(0)
    assert [s for _, s in paired] == e0  # a function of (seed, epoch, position)
    assert [s for _, s in paired] != e0  # the next epoch differs
    other = CrossModalIdentitySampler(DATA, sample_seeds=True, **dict(kw, seed=4))
    assert [s for _, s in other] != e0


def test_sample_seeds_depend_on_position_not_epoch_length_and_split_across_ranks():
    short = CrossModalIdentitySampler(DATA, num_ids=2, num_instances=2, ir_camids=IR, sample_seeds=True, num_batches=3)
    long = CrossModalIdentitySampler(DATA, num_ids=2, num_instances=2, ir_camids=IR, sample_seeds=True, num_batches=5)
    s_short, s_long = [s for _, s in short], [s for _, s in long]
    assert s_long[: len(s_short)] == s_short
    # ranks: the global layout (2 ranks x 1 id) interleaves the ranks' identity slots batch by batch
    kw = dict(num_ids=1, num_instances=2, ir_camids=IR, sample_seeds=True, num_batches=5, world_size=2)
    r0, r1 = (list(CrossModalIdentitySampler(DATA, rank=r, **kw)) for r in (0, 1))
    merged = [p for b in range(5) for p in r0[4 * b : 4 * b + 4] + r1[4 * b : 4 * b + 4]]
    assert [s for _, s in merged] == s_long  # same global layout (5 batches x 2 slots x 2 x 2), same seeds
    assert {s for _, s in r0}.isdisjoint({s for _, s in r1})


def test_sample_seed_pairs_reach_the_dataset_whatever_the_worker_count():
    class Echo(torch.utils.data.Dataset):
        def __len__(self):
            return len(DATA)

        def __getitem__(self, pair):
            i, s = pair
            return torch.tensor([i, s], dtype=torch.int64)

    def run(workers):
        s = CrossModalIdentitySampler(DATA, num_ids=4, num_instances=2, ir_camids=IR, seed=2, sample_seeds=True)
        dl = torch.utils.data.DataLoader(Echo(), batch_size=s.batch_size, sampler=s, drop_last=True,
                                         num_workers=workers)
        return torch.cat(list(dl)).tolist()

    assert run(0) == run(2)


# ---------------------------------------------------------------------------------- views: (index, seed, view)
@pytest.mark.parametrize("views", [(2, 1), (1, 3), (2, 2)])
def test_views_repeat_each_drawn_image_once_per_view(views):
    P, K = 4, 2
    kw = dict(num_ids=P, num_instances=K, ir_camids=IR, seed=5)
    plain = CrossModalIdentitySampler(DATA, sample_seeds=True, **kw)
    s = CrossModalIdentitySampler(DATA, views=views, **kw)
    vv, vi = views
    assert s.views == views and s.batch_size == P * K * (vv + vi)
    assert s.num_batches == plain.num_batches  # a view adds tensors, not images drawn
    for _ in range(2):  # two epochs
        pairs, triples = list(plain), list(s)
        assert len(triples) == len(s) == s.num_batches * s.batch_size
        assert all(len(t) == 3 for t in triples)
        rebuilt = []  # view 0 of every image is the plain run's (index, seed), in the plain run's order
        seeds_by_view: dict[int, list[int]] = {}
        for b in range(s.num_batches):
            batch = triples[b * s.batch_size : (b + 1) * s.batch_size]
            for j in range(P):
                blk = batch[j * K * (vv + vi) : (j + 1) * K * (vv + vi)]
                assert len({DATA[i][1] for i, _, _ in blk}) == 1  # one identity per block
                vis, ir = blk[: K * vv], blk[K * vv :]
                assert all(DATA[i][2] not in IR for i, _, _ in vis) and all(DATA[i][2] in IR for i, _, _ in ir)
                for part, nv in ((vis, vv), (ir, vi)):
                    assert [v for _, _, v in part] == [v for v in range(nv) for _ in range(K)]
                    for v in range(nv):  # every view holds the same K images
                        assert [i for i, _, _ in part[v * K : (v + 1) * K]] == [i for i, _, _ in part[:K]]
                        seeds_by_view.setdefault(v, []).extend(sd for _, sd, _ in part[v * K : (v + 1) * K])
                rebuilt += [(i, sd) for i, sd, v in blk if v == 0]
        assert rebuilt == pairs
        all_seeds = [sd for v in seeds_by_view.values() for sd in v]
        assert len(set(all_seeds)) == len(all_seeds)  # every view of every image has its own seed
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(0)
    assert list(s) == first


def test_views_split_across_ranks_as_one_global_layout():
    kw = dict(num_instances=2, ir_camids=IR, num_batches=4, views=(2, 1))
    whole = list(CrossModalIdentitySampler(DATA, num_ids=2, **kw))
    r0, r1 = (list(CrossModalIdentitySampler(DATA, num_ids=1, world_size=2, rank=r, **kw)) for r in (0, 1))
    n = 2 * 3  # one identity: K * (2 + 1) items per rank and batch
    merged = [t for b in range(4) for t in r0[n * b : n * (b + 1)] + r1[n * b : n * (b + 1)]]
    assert merged == whole


def test_views_errors():
    for bad in [(0, 1), (1, 0), (2,), (2, 1, 1), (True, 1), (1.5, 1), ("2", 1)]:
        with pytest.raises(ConfigError, match="views"):
            CrossModalIdentitySampler(DATA, num_ids=2, ir_camids=IR, views=bad)


def test_view_triples_reach_the_dataset_whatever_the_worker_count():
    class Echo(torch.utils.data.Dataset):
        def __len__(self):
            return len(DATA)

        def __getitem__(self, key):
            return torch.tensor(list(key), dtype=torch.int64)

    def run(workers):
        s = CrossModalIdentitySampler(DATA, num_ids=4, num_instances=2, ir_camids=IR, seed=2, views=(2, 1))
        dl = torch.utils.data.DataLoader(Echo(), batch_size=s.batch_size, sampler=s, drop_last=True,
                                         num_workers=workers)
        return torch.cat(list(dl)).tolist()

    assert run(0) == run(2)


# ---------------------------------------------------------------------------------- draw='independent'
def test_independent_draw_is_the_identity_sampler_law_of_agw_and_caj():
    """AGW's / CAJ's utils.py IdentitySampler: each batch B distinct identities uniformly at random, independently
    of the other batches; per identity and modality np.random.choice(images, K), i.e. with replacement."""
    data = items({p: (10, 10) for p in range(12)})
    P, K, nb = 4, 4, 600
    s = CrossModalIdentitySampler(data, num_ids=P, num_instances=K, ir_camids=IR, seed=3, num_batches=nb,
                                  draw="independent")
    assert s.draw == "independent" and s.batch_size == P * 2 * K
    ids, dup = Counter(), 0
    coverage_gaps = 0
    per_epoch_pass = 12 // P  # batches that a balanced draw needs to cover every identity once
    seen: set[int] = set()
    for k, batch in enumerate(batches(s, data)):
        pids = [batch[j * 2 * K][1] for j in range(P)]
        assert len(set(pids)) == P  # distinct inside a batch
        ids.update(pids)
        seen.update(pids)
        if (k + 1) % per_epoch_pass == 0:
            coverage_gaps += len(seen) < 12
            seen = set()
        for j in range(P):
            block = batch[j * 2 * K : (j + 1) * 2 * K]
            assert len({it[1] for it in block}) == 1
            for half in (block[:K], block[K:]):
                dup += len({it[0] for it in half}) < K
    # identities: uniform marginals (1/12 per slot), no forced coverage (balanced draws cover all every 3 batches)
    assert all(abs(c - nb * P / 12) < 5 * (nb * P / 12) ** 0.5 for c in ids.values()), ids
    assert coverage_gaps > nb // per_epoch_pass // 2
    # images: 4 draws with replacement from 10 repeat one with probability 1 - 10*9*8*7 / 10**4 = 0.496
    n_halves = nb * P * 2
    p = 1 - 10 * 9 * 8 * 7 / 10**4
    assert abs(dup - n_halves * p) < 5 * (n_halves * p * (1 - p)) ** 0.5, dup / n_halves
    # the balanced default never repeats an image an identity has enough of, and covers identities evenly
    b = CrossModalIdentitySampler(data, num_ids=P, num_instances=K, ir_camids=IR, seed=3, num_batches=nb)
    for k, batch in enumerate(batches(b, data)):
        for j in range(2 * P):
            assert len({it[0] for it in batch[j * K : (j + 1) * K]}) == K
        seen.update(batch[j * 2 * K][1] for j in range(P))
        if (k + 1) % per_epoch_pass == 0:
            assert len(seen) == 12
            seen = set()


def test_independent_draw_keeps_layouts_ranks_views_and_determinism():
    kw = dict(num_instances=2, ir_camids=IR, num_batches=5, draw="independent", seed=7)
    whole = list(CrossModalIdentitySampler(DATA, num_ids=2, **kw))
    r0, r1 = (list(CrossModalIdentitySampler(DATA, num_ids=1, world_size=2, rank=r, **kw)) for r in (0, 1))
    merged = [i for b in range(5) for i in r0[4 * b : 4 * b + 4] + r1[4 * b : 4 * b + 4]]
    assert merged == whole  # the same global batches, split by identity slot
    s = CrossModalIdentitySampler(DATA, num_ids=2, views=(2, 1), **kw)
    assert [i for i, _, v in s if v == 0] == whole  # views repeat the drawn images
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(0)
    assert list(s) == first
    assert list(s) != first  # next epoch
    with pytest.raises(ConfigError, match="sampler.draw.*'balanced', 'independent'.*'random'"):
        CrossModalIdentitySampler(DATA, num_ids=2, ir_camids=IR, draw="random")
