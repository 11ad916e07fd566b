// A table that scrolls sideways inside its box says so above it, on a narrow screen most of all:
// the cue is shown only while the table is wider than the box, and follows resizes.
(function () {
  "use strict";
  function mark() {
    document.querySelectorAll(".table-scroll").forEach(function (box) {
      var cue = box.previousElementSibling;
      if (!cue || !cue.classList.contains("scroll-cue")) {
        cue = document.createElement("p");
        cue.className = "scroll-cue";
        cue.textContent = "Scroll sideways for more \u2192";
        box.parentNode.insertBefore(cue, box);
      }
      if (box.scrollWidth > box.clientWidth + 1) {
        cue.setAttribute("data-shown", "");
      } else {
        cue.removeAttribute("data-shown");
      }
    });
  }
  document.addEventListener("DOMContentLoaded", mark);
  window.addEventListener("resize", mark);
  document.addEventListener("htmx:afterSettle", mark);
})();
