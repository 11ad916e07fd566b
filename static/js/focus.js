// After a rejected submit the page comes back with an error summary marked data-focus-on-load:
// move the focus there, so keyboard and screen-reader users start at what went wrong.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var target = document.querySelector("[data-focus-on-load]");
    if (target) {
      target.focus();
    }
  });
})();
