// oada-jobs dashboard: follow a page's live event stream and re-render its live part.
//
// The server watches OADA and sends "changed" on this page's /events/... stream
// (once when the stream opens, then once per burst of changes); each time this
// script fetches the page again with the X-Dashboard-Fragment header and puts
// the server-rendered (escaped) HTML in place. No timers, no polling: the
// browser's EventSource reconnects by itself, and every reconnect brings a
// "changed" of its own.
"use strict";

(function () {
  const live = document.getElementById("live");
  const banner = document.getElementById("banner");
  if (!live || !live.dataset.events || !("EventSource" in window)) {
    return;
  }
  let busy = false;
  let again = false;
  let renders = 0;

  function say(text) {
    if (!banner) {
      return;
    }
    banner.textContent = text || "";
    banner.hidden = !text;
  }

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      do {
        again = false;
        const response = await fetch(window.location.href, {
          headers: { "X-Dashboard-Fragment": "1" },
          credentials: "same-origin",
          cache: "no-store",
          redirect: "error",
        });
        if (response.ok) {
          live.innerHTML = await response.text();
          renders += 1;
          live.dataset.renders = String(renders);
          say("");
        } else {
          say("The OADA server cannot be read right now; this page updates when it answers again.");
        }
      } while (again);
    } catch (error) {
      say("The dashboard cannot be reached (or the login has expired: reload the page); live updates resume when it answers again.");
    } finally {
      busy = false;
    }
  }

  const source = new EventSource(live.dataset.events, { withCredentials: true });
  source.addEventListener("open", function () {
    live.dataset.stream = "open";
  });
  source.addEventListener("changed", refresh);
  source.addEventListener("error", function () {
    live.dataset.stream = "reconnecting";
  });
})();
