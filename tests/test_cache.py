"""The on-disk cubin cache: integrity checks, cross-process locking, clear errors, and what the key covers."""
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from sagegen.cache import KernelCache, cache_key
from sagegen.compiler import option_list
from sagegen.arch import ARCHES
from sagegen.errors import CacheError

FAKE_CUBIN = b"\x7fELF" + bytes(range(256)) * 4
KEY = "ab" * 32


def _builder(data=FAKE_CUBIN):
    calls = []

    def build():
        calls.append(1)
        return data

    return build, calls


def _stored(tmp_path) -> tuple[KernelCache, Path, Path]:
    cache = KernelCache(tmp_path)
    cache.get_or_build("sm80", "quant_x", KEY, _builder()[0])
    cubin, meta = cache.paths("sm80", "quant_x", KEY)
    return cache, cubin, meta


def test_second_lookup_is_served_from_disk_without_building(tmp_path):
    cache = KernelCache(tmp_path)
    build, calls = _builder()
    assert cache.get_or_build("sm80", "quant_x", KEY, build) == (FAKE_CUBIN, True)
    assert KernelCache(tmp_path).get_or_build("sm80", "quant_x", KEY, build) == (FAKE_CUBIN, False)
    assert len(calls) == 1


def test_entry_records_size_hash_and_versions(tmp_path):
    _, cubin, meta = _stored(tmp_path)
    record = json.loads(meta.read_text())
    assert record["size"] == len(FAKE_CUBIN) == cubin.stat().st_size
    assert record["key"] == KEY and record["name"] == "quant_x" and record["arch"] == "sm80"
    assert {"sha256", "sagegen", "nvrtc"} <= set(record)


def _truncate(cubin, meta):
    cubin.write_bytes(cubin.read_bytes()[:100])


def _flip_byte(cubin, meta):
    data = bytearray(cubin.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cubin.write_bytes(bytes(data))


def _delete_json(cubin, meta):
    meta.unlink()


def _delete_cubin(cubin, meta):
    cubin.unlink()


def _garble_json(cubin, meta):
    meta.write_text('{"key": ')


@pytest.mark.parametrize("damage", [_truncate, _flip_byte, _delete_json, _delete_cubin, _garble_json])
def test_damaged_entry_is_detected_and_rebuilt(tmp_path, damage):
    cache, cubin, meta = _stored(tmp_path)
    damage(cubin, meta)
    assert cache.load("sm80", "quant_x", KEY) is None
    build, calls = _builder()
    assert cache.get_or_build("sm80", "quant_x", KEY, build) == (FAKE_CUBIN, True)
    assert calls == [1]
    assert cache.load("sm80", "quant_x", KEY) == FAKE_CUBIN


def test_entry_that_is_not_elf_is_rejected(tmp_path):
    cache = KernelCache(tmp_path)
    cache.store("sm80", "quant_x", KEY, b"PTX text, not a cubin")
    assert cache.load("sm80", "quant_x", KEY) is None


def test_failed_build_leaves_no_entry(tmp_path):
    cache = KernelCache(tmp_path)

    def boom():
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        cache.get_or_build("sm80", "quant_x", KEY, boom)
    assert cache.load("sm80", "quant_x", KEY) is None
    assert not list(tmp_path.rglob("*.cubin")) and not list(tmp_path.rglob("*.json"))


def _race_worker(root: str, log: str, barrier, results):
    def build():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # hold the lock long enough that every other process is waiting on it
        return FAKE_CUBIN

    barrier.wait()
    data, built = KernelCache(Path(root)).get_or_build("sm90a", "quant_race", KEY, build)
    results.put((data == FAKE_CUBIN, built))


def test_concurrent_processes_building_one_key_compile_it_once(tmp_path):
    ctx = mp.get_context("spawn")  # no fork of the test process (it may hold threads)
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    log = tmp_path / "builds.log"
    procs = [ctx.Process(target=_race_worker, args=(str(tmp_path / "cache"), str(log), barrier, results))
             for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(log.read_text().splitlines()) == 1, "the key was compiled more than once"
    assert all(ok for ok, _ in outcomes)
    assert sorted(built for _, built in outcomes) == [False] * (n - 1) + [True]


def test_cache_dir_that_cannot_be_created_is_a_clear_cache_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # root ignores permission bits; a file in the path stops even root
    cache = KernelCache(blocker / "cache")
    with pytest.raises(CacheError, match="SAGEGEN_CACHE_DIR") as e:
        cache.get_or_build("sm80", "quant_x", KEY, _builder()[0])
    assert str(blocker / "cache") in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_cache_dir_is_a_clear_cache_error(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(CacheError, match="not writable"):
            KernelCache(root).get_or_build("sm80", "quant_x", KEY, _builder()[0])
    finally:
        root.chmod(0o755)


def test_sagegen_cache_dir_env_decides_where_entries_go(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEGEN_CACHE_DIR", str(tmp_path / "elsewhere"))
    cache = KernelCache()
    cache.get_or_build("sm80", "quant_x", KEY, _builder()[0])
    assert cache.root == tmp_path / "elsewhere"
    assert len(list((tmp_path / "elsewhere").rglob("quant_x-*.cubin"))) == 1


def test_clear_removes_every_entry_and_reports_the_count(tmp_path):
    cache, _, _ = _stored(tmp_path)
    cache.store("sm90a", "quant_y", KEY, FAKE_CUBIN)
    assert cache.size_bytes() >= 2 * len(FAKE_CUBIN)
    assert cache.clear() >= 4  # two cubins + two json (+ lock files)
    assert cache.size_bytes() == 0 and not list(tmp_path.rglob("*.cubin"))


# --- the key -------------------------------------------------------------------------------------------------------

OPTS = option_list(ARCHES["sm90a"])


def test_key_is_deterministic():
    assert cache_key("quant_x", "int x;", OPTS) == cache_key("quant_x", "int x;", OPTS)


@pytest.mark.parametrize("name, source, options", [
    ("quant_y", "int x;", OPTS),
    ("quant_x", "int x; ", OPTS),
    ("quant_x", "int x;", OPTS + ("-G",)),
    ("quant_x", "int x;", option_list(ARCHES["sm120a"])),
])
def test_key_changes_with_name_source_or_options(name, source, options):
    assert cache_key(name, source, options) != cache_key("quant_x", "int x;", OPTS)


def test_key_changes_with_the_toolchain_fingerprint(monkeypatch):
    from sagegen import cache as cache_mod

    before = cache_key("quant_x", "int x;", OPTS)
    monkeypatch.setattr(cache_mod, "fingerprint", lambda: "nvrtc 99.9")
    assert cache_key("quant_x", "int x;", OPTS) != before


def test_key_cannot_be_forged_by_moving_text_between_parts():
    assert cache_key("ab", "c", OPTS) != cache_key("a", "bc", OPTS)
