"""Property-based fuzzing (hypothesis) of the readers, the label writer, the query selectors and SSFT.

- ``volumes.read_volume`` on mutated bytes of real small NIfTI (.nii.gz straight from the Task04 dataset,
  .nii) and NRRD files: whatever the bytes, only an ``ASSFTError`` may escape, never a raw exception;
  a file that still reads is a finite 3D volume.
- ``volumes.write_volume`` -> ``volumes.read_volume`` on random shapes, affines (rotations, flips, anisotropic
  spacing, offsets) and label dtypes: the same array and geometry come back.
- ``query`` selectors and ``ssft.select_pseudo`` on random pools (duplicates, zero embeddings,
  ties, unscored and rejected cases): no crash, no NaN score, valid unique selections, budget kept.

``ASSFT_FUZZ_EXAMPLES`` sets the examples per property (default 60 for CI; e.g. 5000 locally).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ASSFTLib import volumes
from ASSFTLib import query, ssft
from ASSFTLib.errors import ASSFTError
from ASSFTLib.settings import Settings

EXAMPLES = int(os.environ.get("ASSFT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: Inputs the running test's properties tried (reset and checked around each test by ``inputs_tried``).
TRIED: dict[str, int] = {}


def _count(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


@pytest.fixture(autouse=True)
def inputs_tried(request, record_property):
    """Every property really ran on ``ASSFT_FUZZ_EXAMPLES`` inputs, whatever ran before it.

    The counts are this test's own (reset before, checked after), so the check holds under any
    test order or ``-k`` selection.  It fails when a strategy or an ``assume`` throws most inputs
    away (the property would pass while testing almost nothing) and when a hypothesis test does
    not count its inputs.  The counts go to docs/reliability.md: printed (``-rA``) and recorded as
    JUnit properties.
    """
    TRIED.clear()
    yield
    for name, count in sorted(TRIED.items()):
        record_property(name, count)
    if TRIED:
        print("fuzz inputs tried:", dict(sorted(TRIED.items())))
    if getattr(request.function, "is_hypothesis_test", False):
        assert TRIED, f"{request.node.name} does not count its inputs with _count()"
    short = {name: count for name, count in TRIED.items() if count < EXAMPLES}
    assert not short, f"fewer than ASSFT_FUZZ_EXAMPLES={EXAMPLES} inputs reached the property: {short}"


# ------------------------------------------------------------------------------------ readers
@pytest.fixture(scope="module")
def seed_files(hippo_dir, tmp_path_factory) -> dict[str, bytes]:
    """Real small files: a Task04 image as shipped (.nii.gz) and a crop of it written as .nii and .nrrd."""
    real = sorted((hippo_dir / "imagesTr").glob("*.nii.gz"))[0]
    vol = volumes.read_volume(real)
    crop = vol.array[:10, :12, :8]
    folder = tmp_path_factory.mktemp("seeds")
    volumes.write_volume(folder / "crop.nii", crop, vol.affine)
    volumes.write_volume(folder / "crop.nrrd", crop, vol.affine)
    label = volumes.read_volume(hippo_dir / "labelsTr" / real.name, kind="label")
    volumes.write_volume(folder / "label.nrrd", label.array[:10, :12, :8], vol.affine)
    return {".nii.gz": real.read_bytes(), ".nii": (folder / "crop.nii").read_bytes(),
            ".nrrd": (folder / "crop.nrrd").read_bytes(), "label.nrrd": (folder / "label.nrrd").read_bytes()}


@st.composite
def mutations(draw, size: int):
    """A list of edits on a byte string of length ``size``: flips, overwrites near the header, cuts, insertions."""
    edit = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, size - 1), st.integers(1, 255)),
        st.tuples(st.just("set"), st.integers(0, min(size, 400) - 1), st.integers(0, 255)),
        st.tuples(st.just("cut"), st.integers(0, size - 1), st.just(0)),
        st.tuples(st.just("insert"), st.integers(0, size), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("digit"), st.integers(0, min(size, 400) - 1), st.sampled_from(b"0123456789-9e")),
    )
    return draw(st.lists(edit, min_size=1, max_size=6))


def mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in edits:
        pos = min(pos, len(buf))
        if kind == "flip" and pos < len(buf):
            buf[pos] ^= value
        elif kind in ("set", "digit") and pos < len(buf):
            buf[pos] = value
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = value
    return bytes(buf)


@pytest.mark.parametrize("name", [".nii.gz", ".nii", ".nrrd", "label.nrrd"])
def test_readers_raise_only_assft_errors_on_mutated_files(seed_files, name):
    data = seed_files[name]
    suffix = ".nrrd" if name.endswith(".nrrd") else name
    kind = "label" if name.startswith("label") else "image"

    @FUZZ
    @given(mutations(len(data)))
    def check(edits):
        _count(f"read {name}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"fuzz{suffix}"
            path.write_bytes(mutate(data, edits))
            try:
                vol = volumes.read_volume(path, kind=kind)
            except ASSFTError as exc:
                assert exc.path == str(path) and exc.hint
                return
            assert vol.array.ndim == 3 and min(vol.shape) >= 2
            assert np.isfinite(vol.affine).all()
            if kind == "image":
                assert vol.array.dtype == np.float32 and np.isfinite(vol.array).all()

    check()


def test_a_sign_flip_in_a_nifti_dimension_is_a_volume_error(seed_files, tmp_path):
    """Found by the fuzzer: a negative dim made numpy's memory map raise a raw OverflowError."""
    path = tmp_path / "negative_dim.nii"
    path.write_bytes(mutate(seed_files[".nii"], [("flip", 43, 128)]))  # the high byte of dim[1]
    with pytest.raises(ASSFTError, match="truncated or corrupt") as err:
        volumes.read_volume(path)
    assert err.value.path == str(path)


# ------------------------------------------------------------------------------- label writer
@st.composite
def label_volumes(draw):
    shape = draw(st.tuples(*[st.integers(2, 9)] * 3))
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.int32, np.uint16, np.bool_]))
    hi = 1 if dtype is np.bool_ else draw(st.sampled_from([2, 255, 300, 40000]))
    hi = min(hi, np.iinfo(dtype).max) if dtype is not np.bool_ else 1
    array = draw(hnp.arrays(dtype, shape, elements=st.integers(0, hi) if dtype is not np.bool_ else st.booleans()))
    q, r = np.linalg.qr(np.asarray(draw(hnp.arrays(np.float64, (3, 3), elements=st.floats(-1, 1)))) + 3 * np.eye(3))
    rotation = q * np.sign(np.diag(r))
    if draw(st.booleans()):
        rotation[:, 0] *= -1  # a left-handed grid (e.g. radiological storage order)
    spacing = draw(st.tuples(*[st.floats(0.05, 8.0)] * 3))
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = draw(st.tuples(*[st.floats(-500, 500)] * 3))
    suffix = draw(st.sampled_from([".nii.gz", ".nii", ".nrrd"]))
    return array, affine, suffix


@FUZZ
@given(label_volumes())
def test_label_writer_round_trip_keeps_array_and_geometry(case):
    array, affine, suffix = case
    _count("label round trip")
    with tempfile.TemporaryDirectory() as tmp:
        path = volumes.write_volume(Path(tmp) / f"label{suffix}", array, affine)
        back = volumes.read_volume(path, kind="label")
        assert not [p for p in Path(tmp).iterdir() if p != path]  # no temporary file left behind
    assert back.array.dtype.kind in "iu"
    assert np.array_equal(back.array, array.astype(np.int64))
    scale = max(1.0, float(np.abs(affine).max()))
    assert np.allclose(back.affine, affine, rtol=0, atol=2e-5 * scale)
    volumes.check_same_geometry(volumes.Volume(array.astype(np.uint8) * 0, affine), back)


# ------------------------------------------------------------------------------------- query
@st.composite
def pools(draw):
    n = draw(st.integers(0, 12))
    m = draw(st.integers(0, 4))
    d = draw(st.integers(1, 6))
    unit = st.floats(-1, 1, allow_nan=False, width=32)
    base = draw(hnp.arrays(np.float64, (max(n, 1), d), elements=unit))
    z = base[draw(st.lists(st.integers(0, max(n, 1) - 1), min_size=n, max_size=n))] if n else np.zeros((0, d))
    if n and draw(st.booleans()):
        z[draw(st.integers(0, n - 1))] = 0.0  # an all-zero embedding
    labeled = draw(hnp.arrays(np.float64, (m, d), elements=unit))
    if m and n and draw(st.booleans()):
        labeled[0] = z[0]  # a pool case duplicating a labeled one
    score = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
    K = draw(hnp.arrays(np.float64, (n,), elements=score))
    asd = draw(hnp.arrays(np.float64, (n,), elements=st.floats(0, 1)))
    budget = draw(st.integers(0, 15))
    return K, asd, z, labeled, budget


def _valid(sel: query.Selection, n: int, budget: int) -> None:
    assert sorted(sel.order) == list(range(n))
    assert sel.picked == sel.order[:min(budget, n)] and len(set(sel.picked)) == len(sel.picked)
    for name, values in sel.components.items():
        assert np.asarray(values).shape == (n,), name
        assert not np.isnan(np.asarray(values, dtype=np.float64)).any(), name


@FUZZ
@given(pools(), st.floats(0, 1), st.floats(0, 3), st.booleans())
def test_query_selectors_return_valid_unique_selections(pool, weight, gamma, head):
    K, asd, z, labeled, budget = pool
    n = len(K)
    _count("query pools")
    _valid(query.atsq_select(K, asd, z, labeled, budget, weight, gamma, has_task_head=head), n, budget)
    _valid(query.atsq_select(None, asd, z, labeled, budget, weight, gamma), n, budget)
    _valid(query.dkd_select(K, z, labeled, budget, gamma), n, budget)
    _valid(query.coreset_select(z, labeled, budget), n, budget)
    _valid(query.entropy_select(asd, budget), n, budget)
    _valid(query.asd_select(asd, budget), n, budget)
    _valid(query.random_select(n, budget, seed=budget), n, budget)
    ranks = query.rank_normalize(K)
    assert ranks.shape == (n,) and ((ranks >= 0) & (ranks <= 1)).all()


@FUZZ
@given(pools(), st.integers(0, 2 ** 16))
def test_query_rejects_non_finite_scores_with_an_assft_error(pool, where):
    K, asd, z, labeled, budget = pool
    assume(len(K) > 0)
    _count("query non-finite")
    K = K.copy()
    K[where % len(K)] = np.nan
    with pytest.raises(ASSFTError, match="not finite"):
        query.atsq_select(K, asd, z, labeled, budget)


# -------------------------------------------------------------------------------------- SSFT
@FUZZ
@given(pools(), st.data())
def test_select_pseudo_obeys_thresholds_cap_and_qa(pool, data):
    _, conf, z, labeled, _ = pool
    n = len(conf)
    _count("select_pseudo")
    conf = conf.copy()
    z = z.copy()
    for i in data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=3)) if n else []:
        (conf.__setitem__(i, np.nan) if data.draw(st.booleans()) else z.__setitem__(i, np.nan))
    ids = [f"case {i}" for i in range(n)]
    rejected = data.draw(st.sets(st.sampled_from(ids))) if n else set()
    s = Settings(confidence_threshold=data.draw(st.floats(0, 1)), distance_percentile=data.draw(st.floats(0, 100)),
                 pseudo_ratio=data.draw(st.floats(0, 4)))
    sel = ssft.select_pseudo(ids, conf, z, labeled, tau_c=s.confidence_threshold,
                             distance_percentile=s.distance_percentile, rho=s.pseudo_ratio, rejected=rejected)
    assert len(sel.decisions) == n and [d.case_id for d in sel.decisions] == ids
    assert len(set(sel.selected)) == len(sel.selected) <= sel.cap
    assert sel.cap == int(np.floor(s.pseudo_ratio * len(labeled) + 1e-9))
    chosen = {d.case_id: d for d in sel.decisions if d.selected}
    assert set(chosen) == set(sel.selected) and not set(chosen) & rejected
    for d in chosen.values():
        assert np.isfinite(d.confidence) and np.isfinite(d.distance) and np.isfinite(d.priority)
        assert d.confidence >= sel.tau_c and d.distance <= sel.tau_d and d.reason == ""
    priorities = [chosen[c].priority for c in sel.selected]
    assert priorities == sorted(priorities, reverse=True)
    assert all(d.reason for d in sel.decisions if not d.selected)

