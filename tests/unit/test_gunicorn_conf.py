"""gunicorn's configuration for an API process: where its workers' heartbeat goes."""

from __future__ import annotations

import os

import pytest

from api import gunicorn_conf


def test_the_heartbeat_goes_to_a_writable_memory_directory(tmp_path):
    assert gunicorn_conf.heartbeat_dir(tmp_path) == str(tmp_path)


def test_without_a_memory_directory_the_heartbeat_stays_in_gunicorn_s_default(tmp_path):
    assert gunicorn_conf.heartbeat_dir(tmp_path / "missing") is None


def test_a_file_in_place_of_the_memory_directory_is_not_used(tmp_path):
    (tmp_path / "shm").write_text("")
    assert gunicorn_conf.heartbeat_dir(tmp_path / "shm") is None


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")
def test_gunicorn_is_configured_with_dev_shm_where_there_is_one():
    assert gunicorn_conf.worker_tmp_dir == "/dev/shm"
