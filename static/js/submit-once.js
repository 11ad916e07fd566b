// A form marked data-submit-once is sent once: a second click while the first is on its way does
// nothing, and the button says it is busy. (The form's idempotency key makes the server start one run
// even without this script.) A run carried out in the request (mode sync) shows a progress panel
// that reads how the run is coming along, until its page replaces this one.
(function () {
  var PROGRESS_MS = 2000;

  function follow(form) {
    var panel = document.getElementById(form.dataset.progressPanel || "");
    var mode = form.querySelector("input[name=mode]:checked");
    if (!panel || !form.dataset.progressUrl || !mode || mode.value !== "sync") return;
    panel.hidden = false;
    var target = panel.querySelector("[data-progress]");
    var poll = function () {
      fetch(form.dataset.progressUrl, {credentials: "same-origin"})
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null) target.innerHTML = html; })
        .catch(function () {})
        .then(function () { setTimeout(poll, PROGRESS_MS); });
    };
    setTimeout(poll, PROGRESS_MS / 2);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.matches || !form.matches("form[data-submit-once]")) return;
    if (form.dataset.submitted) {
      event.preventDefault();
      return;
    }
    form.dataset.submitted = "1";
    var button = form.querySelector("button[type=submit]");
    if (button) {
      button.dataset.idleText = button.textContent;
      button.textContent = button.dataset.busyText || button.textContent;
      // Disabled after this event, so the browser still sends the form it started to send.
      setTimeout(function () { button.disabled = true; }, 0);
    }
    follow(form);
  });

  // A page restored from the back-forward cache may be sent again, as a new submission.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    document.querySelectorAll("form[data-submit-once]").forEach(function (form) {
      delete form.dataset.submitted;
      var button = form.querySelector("button[type=submit]");
      if (button && button.dataset.idleText) {
        button.disabled = false;
        button.textContent = button.dataset.idleText;
      }
    });
  });
})();
