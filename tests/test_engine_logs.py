from inference_endpoints.core.engine_logs import failure_summary, root_cause

LOG = """(APIServer pid=1) WARNING 11-26 20:35:55 [system_utils.py:255] Found ulimit of 20000 and failed to automatically increase with error current limit exceeds maximum limit. This can cause fd limit errors like `OSError: [Errno 24] Too many open files`. Consider increasing with ulimit -n
(Worker pid=2) ERROR 11-26 20:36:15 [multiproc_executor.py:953] Traceback (most recent call last):
(Worker pid=2) ERROR 11-26 20:36:15 [multiproc_executor.py:953] RuntimeError: start (0) + length (256) exceeds dimension size (128).
Traceback (most recent call last):
  File "x.py", line 1, in <module>
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}""".splitlines()


def test_root_cause_skips_generic_wrappers() -> None:
    assert root_cause(LOG) == "RuntimeError: start (0) + length (256) exceeds dimension size (128)."


def test_generic_wrapper_is_better_than_nothing() -> None:
    assert root_cause(LOG[-1:]) is not None and "initialization failed" in (root_cause(LOG[-1:]) or "")
    assert root_cause(["all fine"]) is None


def test_summary_names_the_cause_and_keeps_the_tail() -> None:
    text = failure_summary(1, LOG, tail=2)
    assert text.startswith("vLLM exited with code 1: RuntimeError: start (0)")
    assert "Last log lines:" in text and LOG[-1] in text
