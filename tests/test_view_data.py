"""View changes in: the batch format, its checks, atomic storage, the Z-set and the log."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.view_data import store
from app.view_data.models import ViewChange
from tests.conftest import assert_error

CHANGES = "/v0/pipelines/orders/views/totals/changes"


def push(client, changes, **kwargs):
    """POST a batch of changes to orders/totals."""
    if isinstance(changes, list | dict):
        return client.post(CHANGES, json=changes, **kwargs)
    return client.post(CHANGES, data=changes, **kwargs)


def view_contents(app) -> Counter:
    """The stored contents of orders/totals as a multiset of canonical records."""
    with app.app_context():
        view_id = db.session.execute(sa.text("SELECT id FROM views")).scalar_one()
        found = Counter({store.canonical(r): w for r, w in store.contents(view_id)})
        db.session.remove()
        return found


def change_log(app) -> list[tuple[int, int, dict]]:
    """The change log of orders/totals as (seq, weight, record)."""
    with app.app_context():
        rows = db.session.execute(
            sa.select(ViewChange.seq, ViewChange.weight, ViewChange.record).order_by(ViewChange.seq)
        ).all()
        db.session.remove()
        return [(seq, weight, json.loads(text)) for seq, weight, text in rows]


def test_push_stores_changes_in_the_log_and_the_zset(running_pipeline, client, app):
    r = push(client, [{"insert": {"id": 1}}, {"insert": {"id": 2}}, {"delete": {"id": 1}}])
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {
        "records": 3,
        "inserts": 2,
        "deletes": 1,
        "first_seq": 1,
        "last_seq": 3,
        "log_end": 3,
    }
    assert view_contents(app) == Counter({'{"id":2}': 1})
    assert change_log(app) == [(1, 1, {"id": 1}), (2, 1, {"id": 2}), (3, -1, {"id": 1})]


def test_batches_take_consecutive_log_positions(running_pipeline, client):
    first = push(client, [{"insert": {"n": i}} for i in range(5)]).get_json()
    second = push(client, [{"insert": {"n": 9}}]).get_json()
    assert (first["first_seq"], first["last_seq"]) == (1, 5)
    assert (second["first_seq"], second["last_seq"], second["log_end"]) == (6, 6, 6)


def test_records_are_compared_by_content_not_key_order(running_pipeline, client, app):
    assert push(client, [{"insert": {"a": 1, "b": [1, 2]}}]).status_code == 200
    assert push(client, [{"delete": {"b": [1, 2], "a": 1}}]).status_code == 200
    assert view_contents(app) == Counter()


def test_inserting_a_record_twice_gives_it_weight_two(running_pipeline, client, app):
    push(client, [{"insert": {"id": 7}}, {"insert": {"id": 7}}])
    assert view_contents(app) == Counter({'{"id":7}': 2})
    push(client, [{"delete": {"id": 7}}])
    assert view_contents(app) == Counter({'{"id":7}': 1})


def test_a_batch_folds_into_the_stored_weights_in_order(running_pipeline, client, app):
    push(client, [{"insert": {"id": 1}}, {"insert": {"id": 2}}, {"insert": {"id": 2}}])
    r = push(
        client,
        [
            {"insert": {"id": 3}},  # new
            {"delete": {"id": 1}},  # to 0: removed...
            {"insert": {"id": 1}},  # ...and back, weight 1
            {"delete": {"id": 2}},  # 2 -> 1
            {"insert": {"id": 2}},
            {"insert": {"id": 2}},  # -> 3
            {"insert": {"id": 4}},
            {"delete": {"id": 4}},  # new and gone in one batch
            {"insert": {"id": 3}},  # new twice: weight 2
        ],
    )
    assert r.status_code == 200, r.get_json()
    assert view_contents(app) == Counter({'{"id":1}': 1, '{"id":2}': 3, '{"id":3}': 2})
    push(client, [{"delete": {"id": 1}}, {"delete": {"id": 3}}, {"delete": {"id": 3}}])
    assert view_contents(app) == Counter({'{"id":2}': 3})


def test_a_delete_below_zero_is_found_among_many_inserts(running_pipeline, client, app):
    push(client, [{"insert": {"id": 0}}])
    batch = [{"insert": {"id": n}} for n in range(1, 600)]
    batch[300] = {"delete": {"id": 0}}
    batch[450] = {"delete": {"id": 0}}
    details = assert_error(push(client, batch), 400, "InvalidRequest")["details"]
    assert details["index"] == 450
    assert view_contents(app) == Counter({'{"id":0}': 1})
    assert len(change_log(app)) == 1


def test_newline_delimited_json_is_taken_by_content_type(running_pipeline, client, app):
    body = '{"insert": {"id": 1}}\n\n{"insert": {"id": 2}}\r\n{"delete": {"id": 1}}\n'
    for content_type in ("application/x-ndjson", "application/jsonl; charset=utf-8"):
        r = push(client, body, content_type=content_type)
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["records"] == 3
    assert view_contents(app) == Counter({'{"id":2}': 2})


def test_an_empty_batch_stores_nothing(running_pipeline, client, app):
    r = push(client, [])
    assert r.status_code == 200
    assert r.get_json() == {
        "records": 0,
        "inserts": 0,
        "deletes": 0,
        "first_seq": None,
        "last_seq": None,
        "log_end": 0,
    }


@pytest.mark.parametrize(
    ("batch", "index", "problem"),
    [
        ([{"insert": {"id": 1}}, "nope"], 1, "expected an object"),
        ([{"insert": {"id": 1}}, {"upsert": {"id": 1}}], 1, "exactly one key"),
        ([{"insert": {"id": 1}, "delete": {"id": 1}}], 0, "exactly one key"),
        ([{}], 0, "exactly one key"),
        ([{"insert": {"id": 1}}, {"insert": [1, 2]}], 1, "must be a JSON object"),
        ([{"delete": {"id": 1}}], 0, "does not hold"),
        ([{"insert": {"id": 1}}, {"delete": {"id": 1}}, {"delete": {"id": 1}}], 2, "does not hold"),
    ],
)
def test_a_bad_element_is_named_and_nothing_is_stored(
    running_pipeline, client, app, batch, index, problem
):
    push(client, [{"insert": {"id": 0}}])
    body = assert_error(push(client, batch), 400, "InvalidRequest")
    assert body["details"]["index"] == index
    assert problem in body["details"]["problem"]
    assert view_contents(app) == Counter({'{"id":0}': 1})
    assert [seq for seq, _w, _r in change_log(app)] == [1]


def test_a_bad_line_of_ndjson_is_named_by_index_and_line(running_pipeline, client):
    body = '{"insert": {"id": 1}}\n\n{"insert": {"id": \n'
    r = push(client, body, content_type="application/x-ndjson")
    details = assert_error(r, 400, "InvalidRequest")["details"]
    assert details["index"] == 1 and details["line"] == 3
    assert "not valid JSON" in details["problem"]


@pytest.mark.parametrize(
    "body", ['{"insert": {"id": 1}}', "[1, 2", "\xff\xfe", '{"x": 1}\n{"y": 2}']
)
def test_a_body_that_is_not_a_json_array_is_refused(running_pipeline, client, body):
    r = push(client, body.encode("latin-1"), content_type="application/json")
    body = assert_error(r, 400, "InvalidRequest")
    assert "body" in body["details"]


def test_a_stopped_pipeline_refuses_changes(api, client):
    api.create_pipeline()
    body = assert_error(push(client, [{"insert": {"id": 1}}]), 503, "PipelineNotRunning")
    assert body["details"]["pipeline_name"] == "orders"


def test_a_paused_pipeline_stores_changes(running_pipeline, client, app):
    running_pipeline.action("orders", "pause")
    assert push(client, [{"insert": {"id": 1}}]).status_code == 200
    assert view_contents(app) == Counter({'{"id":1}': 1})


def test_unknown_view_and_pipeline_answer_404(running_pipeline, client):
    r = client.post("/v0/pipelines/orders/views/nope/changes", json=[])
    assert assert_error(r, 404, "UnknownView")["details"]["view_name"] == "nope"
    r = client.post("/v0/pipelines/nope/views/totals/changes", json=[])
    assert_error(r, 404, "UnknownPipelineName")


class TestLimits:
    """Batches over the configured size answer 413."""

    @pytest.fixture
    def app_config(self, app_config):
        return {**app_config, "VIEW_CHANGES_MAX_RECORDS": 3, "VIEW_CHANGES_MAX_BYTES": 200}

    def test_too_many_changes_answer_413(self, running_pipeline, client):
        r = push(client, [{"insert": {"i": i}} for i in range(4)])
        details = assert_error(r, 413, "PayloadTooLarge")["details"]
        assert details == {"max_records": 3, "records": 4}
        assert push(client, [{"insert": {"i": i}} for i in range(3)]).status_code == 200

    def test_too_many_bytes_answer_413(self, running_pipeline, client):
        r = push(client, [{"insert": {"text": "x" * 300}}])
        assert assert_error(r, 413, "PayloadTooLarge")["details"]["max_bytes"] == 200


def test_concurrent_pushes_get_disjoint_consecutive_ranges(running_pipeline, app):
    errors = []

    def pusher(n: int) -> None:
        with app.app_context():
            from app.pipelines.service import get_pipeline, get_view
            from app.view_data import service

            try:
                for b in range(10):
                    view = get_view(get_pipeline("default", "orders"), "totals")
                    changes = [(1, store.canonical({"t": n, "b": b, "i": i})) for i in range(20)]
                    service.push_changes(view, changes)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    log = change_log(app)
    assert [seq for seq, _w, _r in log] == list(range(1, 801))
    # Each batch is one run of consecutive positions.
    batches = [(r["t"], r["b"]) for _s, _w, r in log]
    runs = [batches[i : i + 20] for i in range(0, 800, 20)]
    assert all(len(set(run)) == 1 for run in runs)
    assert sum(view_contents(app).values()) == 800


def test_views_push_command_pushes_a_file(running_pipeline, app, tmp_path):
    array = tmp_path / "changes.json"
    array.write_text(json.dumps([{"insert": {"id": 1}}, {"insert": {"id": 2}}]))
    lines = tmp_path / "more.txt"
    lines.write_text('{"delete": {"id": 1}}\n{"insert": {"id": 3}}\n')
    runner = app.test_cli_runner()
    result = runner.invoke(args=["views", "push", "orders", "totals", str(array)])
    assert result.exit_code == 0, result.output
    assert "Pushed 2 changes" in result.output
    result = runner.invoke(
        args=["views", "push", "orders", "totals", str(lines), "--json", "--batch-size", "1"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["batches"] == 2
    assert view_contents(app) == Counter({'{"id":2}': 1, '{"id":3}': 1})


def test_views_push_command_reports_errors_like_the_api(running_pipeline, app, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"insert": {"id": 1}}, {"delete": {"id": 9}}]))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["views", "push", "orders", "totals", str(bad)])
    assert result.exit_code == 1
    assert "(InvalidRequest)" in result.stderr
    assert view_contents(app) == Counter()
    result = runner.invoke(args=["views", "push", "orders", "nope", str(bad)])
    assert result.exit_code == 1 and "(UnknownView)" in result.stderr


def test_the_view_log_keeps_the_view_s_size_through_every_batch(running_pipeline, client, app):
    """view_logs.records (what a snapshot reports) always equals the Z-set's weight sum."""

    def stored_size() -> tuple[int, int]:
        with app.app_context():
            kept = db.session.execute(sa.text("SELECT records FROM view_logs")).scalar_one()
            db.session.remove()
        return kept, sum(view_contents(app).values())

    a, b = {"id": 1}, {"id": 2}
    assert push(client, [{"insert": a}, {"insert": a}, {"insert": b}]).status_code == 200
    assert stored_size() == (3, 3)
    assert push(client, [{"delete": a}, {"insert": {"id": 3}}, {"delete": b}]).status_code == 200
    assert stored_size() == (2, 2)
    # A refused batch (its third change deletes what is gone) changes nothing.
    refused = push(client, [{"insert": {"id": 4}}, {"delete": a}, {"delete": a}])
    assert_error(refused, 400, "InvalidRequest")
    assert stored_size() == (2, 2)
