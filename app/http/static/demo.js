(function () {
  "use strict";
  var form = document.getElementById("issue");
  var slot = document.getElementById("widget-slot");
  var entries = document.getElementById("entries");
  var snippet = document.getElementById("snippet");
  var origin = window.location.origin;
  var runId = null;

  function showSnippet(url, comment) {
    snippet.textContent =
      '<div data-feedback-url="' + (url || "TOKEN URL") + '"' + (comment ? ' data-comment="true"' : "") + "></div>\n" +
      '<script src="' + origin + '/widget.js" async></script>';
  }

  function refresh() {
    if (!runId) return;
    fetch("/demo/entries?run_id=" + encodeURIComponent(runId))
      .then(function (r) { return r.json(); })
      .then(function (rows) {
        document.getElementById("entries-card").hidden = false;
        entries.textContent = rows.length ? rows.map(function (row) { return JSON.stringify(row); }).join("\n") : "(none yet)";
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var data = new FormData(form);
    var comment = data.get("comment") === "on";
    fetch("/demo/token", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({control: data.get("control"), use: data.get("use"), confirm: data.get("confirm") === "on"})
    }).then(function (r) { return r.json(); }).then(function (token) {
      if (!token.url) { slot.textContent = token.detail || "could not issue a token"; return; }
      runId = token.run_id;
      slot.textContent = "";
      var host = document.createElement("div");
      host.id = "widget";
      slot.appendChild(host);
      window.FeedbackWidget.mount(host, token.url, {comment: comment});
      host.addEventListener("feedback", refresh);
      document.getElementById("link").href = token.url + "?score=1";
      document.getElementById("picker").href = token.url;
      document.getElementById("result").hidden = false;
      showSnippet(token.url, comment);
      refresh();
    });
  });
  showSnippet(null, false);
})();
