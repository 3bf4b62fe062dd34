"""The Python package without a GPU: ids, errors, argument and tensor validation."""

import pickle
import re

import numpy as np
import pytest

import tpcomm
from tpcomm import _tpcomm


def test_version_is_the_projects():
    cmake = open(__file__.rsplit("/tests/", 1)[0] + "/CMakeLists.txt").read()
    assert re.search(r"project\(tpcomm VERSION ([0-9.]+)", cmake).group(1) == tpcomm.__version__


def test_unique_ids_are_fresh_bytes_that_pickle():
    a, b = tpcomm.unique_id(), tpcomm.unique_id()
    assert isinstance(a, bytes) and len(a) == tpcomm.UNIQUE_ID_BYTES == 128
    assert a != b
    assert pickle.loads(pickle.dumps(a)) == a


def test_error_carries_code_and_sentence():
    e = tpcomm.Error(4, "rank 1: count overflows")
    assert isinstance(e, RuntimeError)
    assert e.code is tpcomm.Result.INVALID_ARGUMENT
    assert e.message == "rank 1: count overflows"
    assert "INVALID_ARGUMENT" in str(e) and "rank 1: count overflows" in str(e)


def test_error_crosses_processes_and_copies_whole():
    import copy

    e = tpcomm.Error(7, "rank 0: timed out after 300 ms waiting for rank 2")
    for back in (pickle.loads(pickle.dumps(e)), copy.copy(e)):
        assert type(back) is tpcomm.Error
        assert back.code is tpcomm.Result.TIMEOUT
        assert back.message == e.message and str(back) == str(e)


def test_group_brackets_calls_and_nests():
    with tpcomm.group():
        with tpcomm.group():
            pass
    # Ended as often as started: one more end is refused, with the library's sentence.
    assert _tpcomm.group_end() == tpcomm.Result.INVALID_USAGE


def test_group_ends_when_its_block_raises():
    with pytest.raises(KeyError):
        with tpcomm.group():
            raise KeyError("from the block")
    assert _tpcomm.group_end() == tpcomm.Result.INVALID_USAGE, "the group was left open"


@pytest.mark.parametrize(
    "args, kind, words",
    [
        (("not bytes", 0, 2), TypeError, "unique_id must be the bytes"),
        ((b"short", 0, 2), ValueError, "128 bytes, not 5"),
        ((bytes(128), 2, 2), ValueError, "rank must be in [0, 2)"),
        ((bytes(128), -1, 2), ValueError, "rank must be in"),
        ((bytes(128), 0, 0), ValueError, "size must be a positive number"),
        ((bytes(128), 0, tpcomm.MAX_RANKS + 1), ValueError, "at most 8 ranks"),
    ],
)
def test_bad_constructor_arguments_fail_before_any_cuda_call(args, kind, words):
    with pytest.raises(kind, match=re.escape(words)):
        tpcomm.Communicator(*args)


def test_negative_timeout_is_refused():
    with pytest.raises(ValueError, match="timeout_ms"):
        tpcomm.Communicator(bytes(128), 0, 1, timeout_ms=-1)


@pytest.mark.skipif(_tpcomm.device_count() > 0, reason="a GPU is present")
def test_without_a_gpu_init_raises_an_error_naming_cuda():
    with pytest.raises(tpcomm.Error) as info:
        tpcomm.Communicator(tpcomm.unique_id(), 0, 1, device=0)
    assert info.value.code is tpcomm.Result.UNHANDLED_CUDA_ERROR
    assert "CUDA device 0" in info.value.message


def test_host_arrays_are_refused_clearly():
    with pytest.raises(ValueError, match="CUDA device memory; it is in host memory"):
        tpcomm._describe(np.ones(4, np.float32))


def test_types_without_a_number_are_refused():
    with pytest.raises(TypeError, match=r"DLPack type \(code 5, 64 bits\)"):
        tpcomm._describe(np.ones(4, np.complex64))


def test_strided_arrays_are_refused():
    with pytest.raises(ValueError, match="contiguous"):
        tpcomm._describe(np.ones((4, 4), np.float32)[:, ::2])


def test_empty_arrays_are_dense_whatever_their_strides():
    for shape in ((0,), (0, 4), (4, 0)):
        *_, dense = _tpcomm.describe(np.ones(shape, np.float32))
        assert dense, shape


def test_a_communicator_cannot_be_pickled_or_copied():
    import copy
    import pickle

    comm = tpcomm.Communicator.__new__(tpcomm.Communicator)
    with pytest.raises(TypeError, match="belongs to the process that made it"):
        pickle.dumps(comm)
    with pytest.raises(TypeError, match="cannot be pickled or copied"):
        copy.copy(comm)


def test_objects_without_dlpack_are_refused():
    with pytest.raises(TypeError, match="DLPack tensor or array"):
        tpcomm._describe([1.0, 2.0])


def test_every_numbered_dlpack_type_maps_to_tpcomm():
    for np_type, dtype in [
        (np.float32, tpcomm.DataType.FLOAT32),
        (np.float16, tpcomm.DataType.FLOAT16),
        (np.float64, tpcomm.DataType.FLOAT64),
        (np.int8, tpcomm.DataType.INT8),
        (np.uint8, tpcomm.DataType.UINT8),
        (np.int32, tpcomm.DataType.INT32),
        (np.uint32, tpcomm.DataType.UINT32),
        (np.int64, tpcomm.DataType.INT64),
        (np.uint64, tpcomm.DataType.UINT64),
    ]:
        _, count, last, code, *_ = _tpcomm.describe(np.zeros((3, 5), np_type))
        assert (count, last, code) == (15, 5, dtype)


def test_from_process_group_needs_an_initialised_group():
    dist = pytest.importorskip("torch.distributed")
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group exists")
    with pytest.raises(RuntimeError, match="init_process_group"):
        tpcomm.Communicator.from_process_group()


def test_a_group_larger_than_a_communicator_is_refused(monkeypatch):
    """Every rank of a group of 9 sees its size and refuses before any collective call."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: tpcomm.MAX_RANKS + 1)

    def no_collective(*args, **kwargs):
        raise AssertionError("a collective call before the size check")

    monkeypatch.setattr(dist, "all_gather_object", no_collective)
    monkeypatch.setattr(dist, "broadcast_object_list", no_collective)
    with pytest.raises(ValueError, match="the process group has 9 ranks; a tpcomm communicator "
                                         "joins at most 8"):
        tpcomm.Communicator.from_process_group()
