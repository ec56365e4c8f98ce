/* Live view: asks the blueprint's JSON feed for the requests stored after its cursor, every
   data-interval milliseconds, and puts the ones not shown yet at the top of the table. The feed
   sends the records of the last seconds again (a record may be stored late, out of id order),
   so the ids shown are remembered until the cursor has passed them. Values are set as text
   (textContent), never parsed as HTML. */
(function () {
  "use strict";

  var MAX_ROWS = 500;
  var status = document.getElementById("live-status");
  var rows = document.getElementById("live-rows");
  if (!status || !rows) {
    return;
  }
  var feed = status.getAttribute("data-feed");
  var last = status.getAttribute("data-last") || "";
  var interval = Number(status.getAttribute("data-interval")) || 2000;
  var received = 0;
  var shown = new Set((status.getAttribute("data-shown") || "").split(" ").filter(Boolean));

  function cell(text, className) {
    var td = document.createElement("td");
    td.textContent = text;
    if (className) {
      td.className = className;
    }
    return td;
  }

  function row(record) {
    var tr = document.createElement("tr");
    tr.className = (record.status_class ? record.status_class + " " : "") + "fresh";
    tr.appendChild(cell(record.date, "nowrap when"));
    tr.appendChild(cell(record.method));
    var path = cell("", "path");
    var link = document.createElement("a");
    link.href = record.url;
    link.textContent = record.target;
    path.appendChild(link);
    tr.appendChild(path);
    tr.appendChild(cell(record.status, "num status"));
    tr.appendChild(cell(record.time, "num nowrap"));
    var db = cell(record.db_count, "num nowrap optional");
    if (record.db_repeated) {
      db.title = "a query shape repeated " + record.db_repeated;
      var repeated = document.createElement("span");
      repeated.className = "warn-text";
      repeated.textContent = " (" + record.db_repeated + ")";
      db.appendChild(repeated);
    }
    tr.appendChild(db);
    tr.appendChild(cell(record.db_time, "num nowrap optional"));
    tr.appendChild(cell(record.user, "optional"));
    tr.appendChild(cell(record.ip, "optional"));
    tr.appendChild(cell(record.endpoint, "optional"));
    return tr;
  }

  function show(data) {
    var records = (data.records || []).filter(function (record) {
      return !shown.has(record.id);
    });
    records.forEach(function (record) {
      shown.add(record.id);
      rows.insertBefore(row(record), rows.firstChild);
    });
    while (rows.children.length > MAX_ROWS) {
      rows.removeChild(rows.lastChild);
    }
    if (records.length) {
      var empty = rows.closest(".scroll").nextElementSibling;
      if (empty && empty.classList.contains("empty")) {
        empty.remove();
      }
    }
    received += records.length;
    last = data.last || last;
    shown.forEach(function (id) {
      if (id <= last) {
        shown.delete(id); // ids sort as text like ObjectIds: the feed sends only ids above last
      }
    });
    status.textContent =
      "Live: checked at " + new Date().toISOString().slice(11, 19) + " UTC, " +
      received + " new since the page was loaded.";
  }

  function schedule() {
    window.setTimeout(poll, interval);
  }

  function poll() {
    if (document.hidden) {
      schedule();
      return;
    }
    var url = feed + (feed.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(last);
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("the dashboard answered " + response.status);
        }
        return response.json();
      })
      .then(show)
      .catch(function (error) {
        status.textContent = "Paused (" + error.message + "); trying again.";
      })
      .then(schedule);
  }

  status.textContent = "Live: waiting for new requests.";
  schedule();
})();
