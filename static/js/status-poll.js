// Backoff for the pages' polls: the run status fragment (templates/runs/_status.html) and the
// runs list's active rows (templates/runs/_rows.html), each marked with data-poll-base-ms.
// A successful poll swaps in a fresh fragment, which schedules its own poll 4 s later.
// A failed poll (network error or 4xx/5xx) swaps nothing, so we schedule the retry here,
// waiting twice as long after each failure in a row: 8, 16, 32 s ... capped at 60 s.
// Each poll may also append output lines to #run-log; the oldest are dropped past a cap.
(function () {
  "use strict";

  function pollingElement(evt) {
    var elt = evt.detail && evt.detail.elt;
    return elt && elt.dataset.pollBaseMs && elt.hasAttribute("hx-get") ? elt : null;
  }

  document.addEventListener("htmx:afterRequest", function (evt) {
    var elt = pollingElement(evt);
    if (!elt || evt.detail.successful) {
      return;
    }
    var failures = Number(elt.dataset.pollFailures || 0) + 1;
    var base = Number(elt.dataset.pollBaseMs || 4000);
    var max = Number(elt.dataset.pollMaxMs || 60000);
    var delay = Math.min(base * Math.pow(2, failures), max);
    elt.dataset.pollFailures = String(failures);
    elt.dataset.pollNextDelayMs = String(delay);
    window.setTimeout(function () {
      if (document.body.contains(elt)) {
        window.htmx.trigger(elt, "status-poll:retry");
      }
    }, delay);
  });

  document.addEventListener("htmx:oobAfterSwap", function () {
    var log = document.getElementById("run-log");
    if (!log) {
      return;
    }
    var max = Number(log.dataset.maxLines || 1000);
    while (log.children.length > max) {
      log.removeChild(log.firstElementChild);
    }
    log.scrollTop = log.scrollHeight;
  });
})();
