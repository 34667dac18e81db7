// Gantry's one script. Pages work without it; it adds the live log of a
// running run and the copy buttons.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const log = document.getElementById("log");
  if (log && log.dataset.events && window.EventSource) {
    const events = new EventSource(log.dataset.events);
    events.addEventListener("log", (event) => {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(document.createTextNode(event.data));
      if (atEnd) log.scrollTop = log.scrollHeight;
    });
    events.addEventListener("end", () => {
      events.close();
      // The run ended: show its final state and buttons.
      window.location.reload();
    });
  }
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      try {
        await navigator.clipboard.writeText(field.value);
        button.textContent = "Copied";
      } catch {
        field.select();
      }
    });
  }
});
