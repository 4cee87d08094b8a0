/* Live fragments without reloads: every few seconds, fetch the page's fragment URL and swap each
   element marked data-live (matched by id). An element the user is working in (focus, typed
   input, an open <details>) keeps its forms: only its attributes and data-live-part children are
   updated, so a half-typed skip reason or finalize input is never wiped. */
(function () {
  "use strict";

  function busy(el) {
    if (el.contains(document.activeElement) && document.activeElement !== document.body) return true;
    if (el.querySelector("details[open], .errornote")) return true;
    return Array.prototype.some.call(el.querySelectorAll("input, textarea, select"), function (i) {
      if (i.type === "hidden" || i.type === "submit") return false;
      if (i.type === "checkbox" || i.type === "radio") return i.checked !== i.defaultChecked;
      return i.value !== i.defaultValue;
    });
  }

  function update(old, fresh) {
    if (!busy(old)) {
      old.replaceWith(fresh);
      return;
    }
    Array.prototype.forEach.call(fresh.attributes, function (a) {
      old.setAttribute(a.name, a.value);
    });
    fresh.querySelectorAll("[data-live-part]").forEach(function (part) {
      var mine = old.querySelector('[data-live-part="' + part.getAttribute("data-live-part") + '"]');
      if (mine && !busy(mine)) mine.replaceWith(part);
    });
  }

  function stopped(root, text) {
    if (root.getAttribute("data-live-stopped")) return;
    root.setAttribute("data-live-stopped", "1");
    var note = document.createElement("p");
    note.className = "errornote";
    note.textContent = text;
    root.parentNode.insertBefore(note, root);
  }

  function refresh(root) {
    if (root.getAttribute("data-live-stopped")) return;
    var url = root.getAttribute("data-live-url");
    fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "live.js" } })
      .then(function (r) {
        if (r.redirected && r.url.indexOf("/login/") !== -1) {
          stopped(root, "Your session has ended: reload the page and log in again to see it update.");
          return null;
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        doc.querySelectorAll("[data-live]").forEach(function (fresh) {
          var old = document.getElementById(fresh.id);
          if (old) update(old, document.importNode(fresh, true));
        });
        root.setAttribute("data-live-updated", new Date().toISOString());
      })
      .catch(function () { /* the next tick tries again */ });
  }

  function start() {
    document.querySelectorAll("[data-live-url]").forEach(function (root) {
      var every = parseInt(root.getAttribute("data-live-interval") || "3000", 10);
      setInterval(function () { refresh(root); }, every);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
