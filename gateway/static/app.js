// Entry point: the three pages behind #hash links, and the optional API key.

import { apiKey, setApiKey } from "./api.js";
import { setupCompare } from "./compare.js";
import { setupDashboard } from "./dashboard.js";
import { $ } from "./dom.js";
import { setupGenerate } from "./generate.js";

const PAGES = ["generate", "compare", "dashboard"];

function setupApiKey() {
  const input = $("#api-key");
  input.value = apiKey();
  input.addEventListener("change", () => setApiKey(input.value.trim()));
  $("#api-key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
  });
}

function setupRouter(dashboard) {
  function show() {
    const wanted = location.hash.slice(1);
    const page = PAGES.includes(wanted) ? wanted : "generate";
    for (const name of PAGES) $(`#page-${name}`).hidden = name !== page;
    for (const link of document.querySelectorAll("nav a[data-page]")) {
      if (link.dataset.page === page) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (page === "dashboard") dashboard.show();
    else dashboard.hide();
    document.title = `${page[0].toUpperCase()}${page.slice(1)} · Intent gateway`;
    return page;
  }
  window.addEventListener("hashchange", () => {
    show();
    $("#main").focus(); // keyboard and screen-reader users land on the new page
  });
  show();
}

// "Skip to content" focuses the page shown; followed as a link, #main would be a route (Generate).
$(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  $("#main").focus();
});

setupApiKey();
setupGenerate();
setupCompare();
setupRouter(setupDashboard());
