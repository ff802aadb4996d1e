"""shared.hnsw_file against hnswlib's own load_index: the same index, field by field."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import hnswlib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import hnsw_file
from shared.errors import SnapshotError
from shared.hnsw_file import HEADER, open_index, read_checked, verify_file
from tests.support.damage import HOW, damage

# (dimensions, items, deleted, capacity asked at load (at least the items are kept), M)
CASES = [
    (8, 0, 0, 0, 16),
    (8, 0, 0, 5, 16),
    (8, 1, 0, 0, 16),
    (16, 1, 1, 0, 16),
    (32, 300, 0, 0, 16),
    (32, 300, 0, 1000, 16),
    (32, 300, 0, 10, 16),
    (32, 300, 40, 0, 4),
    (64, 1200, 100, 2000, 24),
    (3, 500, 499, 0, 8),
]


def saved(path: Path, dim: int, items: int, deleted: int, m: int) -> np.ndarray:
    """Save an index of items random vectors (labels sparse), the first `deleted` marked deleted;
    the vectors."""
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max(items, 1) + 7, M=m, ef_construction=40, allow_replace_deleted=True)
    vectors = np.random.default_rng(items + dim).standard_normal((items, dim)).astype(np.float32)
    if items:
        index.add_items(vectors, np.arange(items) * 3 + 11)
    for label in range(deleted):
        index.mark_deleted(label * 3 + 11)
    index.save_index(str(path))
    return vectors


def loaded_by_hnswlib(path: Path, dim: int, capacity: int) -> hnswlib.Index:
    index = hnswlib.Index(space="cosine", dim=dim)
    index.load_index(str(path), max_elements=capacity, allow_replace_deleted=True)
    return index


def opened(path: Path, dim: int, capacity: int) -> hnswlib.Index:
    content = path.read_bytes()
    return open_index(np.frombuffer(content, np.uint8), "cosine", dim, capacity)


def assert_same_state(ours: hnswlib.Index, theirs: hnswlib.Index) -> None:
    mine, reference = ours.__getstate__()[0], theirs.__getstate__()[0]
    assert mine.keys() == reference.keys()
    for field, value in reference.items():
        if field == "seed":
            continue  # load_index leaves it unset: it only draws the levels of items added later
        if isinstance(value, np.ndarray):
            assert np.array_equal(mine[field], value), field
        else:
            assert mine[field] == value, field


@pytest.mark.parametrize(("dim", "items", "deleted", "capacity", "m"), CASES)
def test_open_index_builds_what_load_index_builds(tmp_path, dim, items, deleted, capacity, m):
    path = tmp_path / "index.bin"
    vectors = saved(path, dim, items, deleted, m)
    ours, theirs = opened(path, dim, capacity), loaded_by_hnswlib(path, dim, max(capacity, items))
    assert_same_state(ours, theirs)
    assert ours.get_max_elements() == theirs.get_max_elements()
    live = sorted(set(theirs.get_ids_list()))
    assert sorted(ours.get_ids_list()) == live
    if items > deleted:
        k = min(5, items - deleted)
        for index in (ours, theirs):
            index.set_ef(50)
        assert np.array_equal(
            ours.knn_query(vectors[:20], k=k)[0], theirs.knn_query(vectors[:20], k=k)[0]
        )


def test_an_opened_index_takes_new_items_and_reuses_deleted_slots(tmp_path):
    path = tmp_path / "index.bin"
    vectors = saved(path, 16, 50, 5, 16)
    index = opened(path, 16, 60)
    index.add_items(vectors[:5], [1000, 1001, 1002, 1003, 1004], replace_deleted=True)
    assert index.element_count == 50
    index.add_items(vectors[5:15], np.arange(2000, 2010))
    assert index.element_count == 60
    assert index.knn_query(vectors[7], k=1)[0][0][0] in {2002, 7 * 3 + 11}


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_a_file_is_read_and_checked_whatever_the_read_size(tmp_path, monkeypatch, chunk):
    path = tmp_path / "index.bin"
    saved(path, 8, 40, 0, 16)
    monkeypatch.setattr(hnsw_file, "READ_CHUNK", chunk)
    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    assert read_checked(path, len(content), digest).tobytes() == content
    verify_file(path, len(content), digest)
    with pytest.raises(SnapshotError, match="sha256 does not match"):
        verify_file(path, len(content), hashlib.sha256(content[:-1] + b"!").hexdigest())


@pytest.mark.parametrize("check", [read_checked, verify_file])
@pytest.mark.parametrize("how", HOW)
def test_a_damaged_file_is_refused(tmp_path, how, check):
    path = tmp_path / "index.bin"
    saved(path, 8, 40, 0, 16)
    content = path.read_bytes()
    message = damage(path, how)
    with pytest.raises(SnapshotError) as raised:
        check(path, len(content), hashlib.sha256(content).hexdigest())
    assert str(raised.value) == message


def rewritten(content: bytes, how: str) -> bytes:
    """content with its structure (not only its bytes) broken: what a sha256 cannot catch when
    the writer itself wrote a wrong file."""
    fields = list(HEADER.unpack_from(content))
    if how == "header only":
        return content[: HEADER.size - 1]
    if how == "more elements than bytes":
        fields[1:3] = [fields[1] + 1000, fields[2] + 1000]
    if how == "label offset":
        fields[4] += 4
    if how == "trailing bytes":
        return content + b"\0\0"
    if how == "link lists cut":
        return content[:-3]
    if how == "odd link list size":
        at = HEADER.size + fields[2] * fields[3]
        return content[:at] + struct.pack("<I", 5) + content[at + 4 :]
    return HEADER.pack(*fields) + content[HEADER.size :]


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("header only", "shorter than the header"),
        ("more elements than bytes", "1040 elements do not fit the file"),
        ("label offset", "label_offset is 168, not 164 (dim 8)"),
        ("trailing bytes", "2 bytes follow the link lists"),
        ("link lists cut", "element 39 has a link list of"),
        ("odd link list size", "element 0 has a link list of 5 bytes"),
    ],
)
def test_open_index_refuses_a_file_of_another_shape(tmp_path, how, problem):
    path = tmp_path / "index.bin"
    saved(path, 8, 40, 0, 16)
    broken = rewritten(path.read_bytes(), how)
    with pytest.raises(ValueError) as raised:
        open_index(np.frombuffer(broken, np.uint8), "cosine", 8, 0)
    assert str(raised.value).startswith(problem)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "index.bin"
    saved(path, 8, 60, 4, 4)  # M 4: several upper levels
    return path.read_bytes()


@settings(max_examples=300, deadline=None)
@given(
    changes=st.lists(
        st.tuples(
            st.floats(0, 1, exclude_max=True),
            st.sampled_from([0, 1, 2, 3, 4, 31, 32, 60, 127, 128, 255]),
        ),
        min_size=1,
        max_size=4,
    ),
    in_header=st.booleans(),
)
def test_open_index_of_any_damaged_file_loads_or_is_refused(small_file, changes, in_header):
    """Bytes changed anywhere (a header field, a link, a flag): never a crash of hnswlib."""
    damaged = bytearray(small_file)
    span = HEADER.size if in_header else len(damaged)
    for where, value in changes:
        damaged[int(where * span)] = value
    try:
        index = open_index(np.frombuffer(bytes(damaged), np.uint8), "cosine", 8, 0)
    except ValueError:
        return
    index.set_ef(20)
    try:
        index.knn_query(np.ones((3, 8), np.float32), k=min(3, index.element_count))
    except RuntimeError as exc:  # every element marked deleted: fewer than k to return
        assert "contiguous 2D array" in str(exc)
