// "Copy" buttons: each copies the text of the element its data-copy names, then says so for a moment.
// They stay hidden without JavaScript, where the text can still be selected by hand.
(function () {
  function ready(root) {
    root.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.hidden = false;
      if (button.dataset.copyReady) return;
      button.dataset.copyReady = "1";
      button.addEventListener("click", function () {
        var source = document.getElementById(button.dataset.copy);
        if (!source || !navigator.clipboard) return;
        navigator.clipboard.writeText(source.textContent.trim()).then(function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 2000);
        });
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { ready(document); });
})();
