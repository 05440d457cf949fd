// The console's own script (htmx does the rest): a tab in the background asks for nothing.
// A page's poller (data-poll) skips its polls while the tab is hidden; the next one after
// the tab is shown again brings the page up to date.
document.addEventListener("htmx:beforeRequest", function (event) {
  if (document.hidden && event.detail.elt.hasAttribute("data-poll")) {
    event.preventDefault();
  }
});
