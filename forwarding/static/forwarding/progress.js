/* Sending progress (forwarding/progress.py), refreshed every 2 s from each box's progress endpoint (JSON)
 * while changes are pending: the connection's page, and each row of an audience's Connections panel.
 * It stops polling a box once its outbox is empty, and waits while the page is hidden. No framework. */
(function () {
  "use strict";
  function watch(box) {
    var url = box.getAttribute("data-progress-url");
    var bar = box.querySelector("progress");
    var text = box.querySelector(".progress-text");
    function refresh() {
      if (document.hidden) { setTimeout(refresh, 2000); return; }
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) { return response.ok ? response.json() : Promise.reject(response.status); })
        .then(function (data) {
          bar.value = data.percent;
          text.textContent = data.text;
          if (data.pending > 0) setTimeout(refresh, 2000);
        })
        .catch(function () { setTimeout(refresh, 10000); });
    }
    refresh();
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-progress-url]"), watch);
})();
