from tests.conftest import assert_error


def test_walkthrough(running_pipeline, run_resets, app, tmp_path):
    api = running_pipeline
    token = api.reset()
    r = api.status(token)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["phase"] == "queued"
    assert run_resets() == 1
    body = api.status(token).get_json()
    assert body["status"] == "complete" and body["phase"] == "done"
    assert (tmp_path / "sinks" / "out" / "totals.jsonl").read_bytes() == b""
    api.action("orders", "stop")
    assert_error(api.status(token), 503, "PipelineNotRunning")
    api.action("orders", "start")
    body = assert_error(api.status(token), 410, "PipelineRestarted")
    assert body["details"]["token_incarnation"] == 1
