"""CrossModalIdentitySampler: batch composition, replacement rule, determinism, epochs, ranks, errors."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import pytest
import torch
from vdreid.data import CrossModalIdentitySampler

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
