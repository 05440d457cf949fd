// The console's own script (htmx does the rest).
//
// A tab in the background asks for nothing: a page's poller (data-poll) skips its polls
// while the tab is hidden; the next one after the tab is shown again brings the page up
// to date.
//
// A running reset's bar (.reset-progress[data-events]) follows the reset's event stream
// (Server-Sent Events: a `status` event, the JSON of reset_status, at each change): the
// bar, its percent, the records replayed, the rate and the time left move as the reset
// does. While streams carry every running bar, the page polls at its idle pace only
// (data-idle on the poller), for the other numbers; when a stream ends (the reset ended)
// the page polls at once for the history. Where EventSource is missing, or a stream
// fails (503 beyond the server's streams, the reset gone), the page polls as it did
// without streams. A page opens MAX_STREAMS at most: each holds one of the browser's few
// connections to the server (six over HTTP/1.1), which the polls and buttons need too.
(function () {
  "use strict";

  var FINAL = { complete: true, failed: true, cancelled: true };
  var MAX_STREAMS = 2;
  var streams = {}; // stream URL -> {source, open, last}
  var failed = {}; // stream URLs that failed: their bars are polled
  var lastPoll = Date.now();
  var forcePoll = false;

  function poller() {
    return document.getElementById("poller");
  }

  function idleMs() {
    var p = poller();
    return 1000 * Number((p && p.dataset.idle) || 5);
  }

  // Whether open streams carry every running bar on the page (then polls can wait).
  function streamed() {
    var running = document.querySelectorAll(".reset-progress[data-events]");
    return running.length > 0 && Array.prototype.every.call(running, function (bar) {
      var stream = streams[bar.dataset.events];
      return stream && stream.open;
    });
  }

  function bars(url) {
    return document.querySelectorAll('.reset-progress[data-events="' + CSS.escape(url) + '"]');
  }

  function number(value) {
    return Number(value).toLocaleString("en-US");
  }

  function setText(bar, selector, text) {
    var el = bar.querySelector(selector);
    if (el) {
      el.textContent = text;
    }
  }

  // Show a status event on a bar, as the server renders it (templates/console/_panel.html).
  function show(bar, data) {
    var percent = 0;
    if (data.status === "complete") {
      percent = 100;
    } else if (data.snapshot_records) {
      percent = Math.min(100, Math.floor((data.replayed_records * 100) / data.snapshot_records));
    }
    var running = data.status === "inprogress";
    bar.className = bar.className.replace(/\bstatus-\S+/, "status-" + data.status);
    bar.dataset.status = data.status;
    bar.dataset.phase = data.phase;
    bar.dataset.percent = String(percent);
    bar.dataset.replayed = String(data.replayed_records);
    setText(bar, '[data-field="headline"]', "Reset " + (running ? "running" : data.status));
    setText(bar, ".phase", data.phase.replace(/_/g, " "));
    setText(bar, ".percent", percent + "%");
    var progress = bar.querySelector("progress");
    if (progress) {
      progress.value = percent;
      progress.textContent = percent + "%";
    }
    setText(
      bar,
      '[data-field="replayed"]',
      number(data.replayed_records) + " / " + number(data.snapshot_records) +
        " snapshot records replayed"
    );
    var rate = data.rate_records_per_second;
    if (rate || running) {
      setText(bar, '[data-field="rate"]', rate ? "· " + number(Math.round(rate)) + " records/s" : "");
    }
    var eta = data.eta_seconds;
    setText(bar, '[data-field="eta"]', eta === null || eta === undefined ? "" :
      "· about " + number(Math.round(eta)) + " s left");
    if (!running) {
      var cancel = bar.querySelector("form .cancel-reset");
      if (cancel) {
        cancel.closest("form").remove();
      }
    }
  }

  // Poll now (the reset ended, or its stream failed): the poller's console:refresh trigger.
  function refresh() {
    var p = poller();
    if (p && window.htmx) {
      forcePoll = true;
      window.htmx.trigger(p, "console:refresh");
    }
  }

  function close(url) {
    var stream = streams[url];
    if (stream) {
      stream.source.close();
      delete streams[url];
    }
  }

  function open(url) {
    var source = new EventSource(url);
    var stream = (streams[url] = { source: source, open: false, last: null });
    source.addEventListener("open", function () {
      stream.open = true;
      lastPoll = Date.now();
    });
    source.addEventListener("status", function (event) {
      var data = JSON.parse(event.data);
      var shown = bars(url);
      stream.last = data;
      shown.forEach(function (bar) {
        show(bar, data);
      });
      if (!shown.length) {
        close(url); // the page moved on
      } else if (FINAL[data.status]) {
        close(url);
        shown.forEach(function (bar) {
          bar.removeAttribute("data-events"); // nothing more to follow
        });
        refresh();
      }
    });
    source.addEventListener("error", function (event) {
      if (event.data === undefined && source.readyState === EventSource.CONNECTING) {
        // Reconnecting by itself (Last-Event-ID): the page polls meanwhile.
        stream.open = false;
        return;
      }
      // An `error` event (the reset can no longer be answered) or a failed connection.
      close(url);
      failed[url] = true;
      refresh();
    });
  }

  // Open a stream for each running bar on the page; close those whose bars are gone.
  function watch() {
    if (!window.EventSource || !window.CSS) {
      return;
    }
    var wanted = {};
    document.querySelectorAll(".reset-progress[data-events]").forEach(function (bar) {
      var url = bar.dataset.events;
      var stream = streams[url];
      wanted[url] = true;
      if (stream) {
        // A poll swapped the bar in: show the stream's newer state again.
        var last = stream.last;
        if (last && last.replayed_records >= Number(bar.dataset.replayed || 0)) {
          show(bar, last);
        }
      } else if (!failed[url] && Object.keys(streams).length < MAX_STREAMS) {
        open(url);
      }
    });
    Object.keys(streams).forEach(function (url) {
      if (!wanted[url]) {
        close(url);
      }
    });
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    if (!event.detail.elt.hasAttribute("data-poll")) {
      return;
    }
    if (forcePoll) {
      forcePoll = false;
    } else if (document.hidden || (streamed() && Date.now() - lastPoll < idleMs())) {
      event.preventDefault();
      return;
    }
    lastPoll = Date.now();
  });
  document.addEventListener("htmx:afterSettle", watch);
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", watch);
  } else {
    watch();
  }
})();
