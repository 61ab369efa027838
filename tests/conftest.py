"""Test-session settings shared by every test module."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# the partition cache (fedkd/data/partition_cache.py) of this session only: tests never
# read or write the user's ~/.cache/fedkd; subprocesses inherit the variable
if "FEDKD_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="fedkd-test-cache-")
    os.environ["FEDKD_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
