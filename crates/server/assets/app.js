// Shows whether the server is ready. No inline script: the page's CSP allows only scripts
// carrying its per-response nonce (WEB-1).
"use strict";
(function () {
  var el = document.getElementById("status");
  fetch("/ready", { credentials: "same-origin", cache: "no-store" })
    .then(function (r) {
      el.textContent = r.ok ? "ready" : "not ready (" + r.status + ")";
      el.className = r.ok ? "ok" : "bad";
    })
    .catch(function () {
      el.textContent = "unreachable";
      el.className = "bad";
    });
})();
