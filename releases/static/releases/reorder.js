// Update groups: after a drag, django-admin-sortable2 posts the new positions to its endpoint
// but shows nothing. Watch that request: on success renumber the "#" column from the handles'
// new order and say it is saved; on a refusal say why and that the page shows an unsaved order.
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  // The page's sortable2 configuration comes after this script in the head.
  var config = document.getElementById("admin_sortable2_config");
  if (!config || !window.fetch) return;
  var updateUrl = JSON.parse(config.textContent).update_url;
  var status = function (text, ok) {
    var box = document.getElementById("reorder-status");
    if (!box) return;
    box.textContent = text;
    box.className = ok ? "rp-saved" : "rp-save-error";
  };
  var renumber = function () {
    document.querySelectorAll("#result_list tbody tr").forEach(function (row) {
      var handle = row.querySelector(".handle"), cell = row.querySelector(".field-position_shown");
      if (handle && cell) cell.textContent = handle.getAttribute("order");
    });
  };
  var original = window.fetch;
  window.fetch = function (url, options) {
    var result = original.apply(this, arguments);
    if (String(url) !== updateUrl) return result;
    status("Saving the new order…", true);
    return result.then(function (response) {
      if (response.ok) {
        renumber();
        status("Saved: the new order is in force (audited, in each row's history).", true);
      } else {
        response.clone().text().then(function (text) {
          status("Not saved: " + (text || response.statusText) + ". Reload to see the order in force.", false);
        });
      }
      return response;
    }, function (error) {
      status("Not saved: the portal did not answer. Reload to see the order in force.", false);
      throw error;
    });
  };
});
