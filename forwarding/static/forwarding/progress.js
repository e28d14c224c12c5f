/* The connection page's sending progress, refreshed every 2 s from its progress endpoint (JSON) while
 * changes are pending; it stops polling once the outbox is empty or the page is hidden. No framework. */
(function () {
  "use strict";
  var box = document.getElementById("sending-progress");
  if (!box) return;
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
})();
