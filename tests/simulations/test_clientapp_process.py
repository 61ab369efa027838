"""The long-lived ClientApp process (``simulations/clientapp_process.py``) without a
SuperNode: its argument errors, its retry rule and its layout of imports. The process
serving real SuperNodes is tested in ``test_deploy.py``."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from simulations import clientapp_process


@pytest.mark.parametrize(
    ("args", "wrong"),
    [
        (["--runtime-api-address", "127.0.0.1:9094"], "exactly one of --insecure and"),
        (
            ["--runtime-api-address", "127.0.0.1:9094", "--insecure", "--root-certificates", "ca"],
            "exactly one of --insecure and",
        ),
        (["--runtime-api-address", "127.0.0.1:9094", "--insecure", "--poll", "0"], "--poll"),
    ],
)
def test_bad_arguments_are_one_line(args, wrong):
    with pytest.raises(SystemExit) as exc:
        clientapp_process.main(args)
    message = str(exc.value.code)
    assert message.startswith("simulations.clientapp_process: error: ") and wrong in message
    assert "\n" not in message


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:9094/")
    response = httpx.Response(code, request=request)
    return httpx.HTTPStatusError(str(code), request=request, response=response)


def test_a_refused_token_ends_the_task_not_the_process():
    """Flower's policy SIGINTs the process on HTTP 401 and raises RunNotRunningException (a
    BaseException, which would end the process) on HTTP 403; ours gives up on that call
    only (the task's error handling catches the HTTP error), and keeps Flower's retries
    for a SuperNode that is briefly unavailable."""
    invoker = clientapp_process._retry_invoker()
    assert invoker.should_giveup(_status_error(401)) is True
    assert invoker.should_giveup(_status_error(403)) is True
    assert invoker.should_giveup(_status_error(503)) is False
    assert invoker.should_giveup(httpx.ConnectError("refused")) is False


def test_the_process_imports_none_of_the_apps_packages():
    """The app's modules must come from the installed FAB, as in flwr-clientapp: this
    module imports no package of the app, which would shadow the FAB's copy."""
    code = (
        "import sys, simulations.clientapp_process; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'clients', 'fedkd', 'protocol', 'server', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
