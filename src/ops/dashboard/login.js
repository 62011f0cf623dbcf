// The dashboard's sign-in form: posts the admin token as JSON (the stats
// listener accepts POST only as application/json) and opens the dashboard
// once burrow has set its cookie.
"use strict";

(function () {
  const form = document.getElementById("sign-in");
  const error = document.getElementById("sign-in-error");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const token = document.getElementById("token").value.trim();
    try {
      const response = await fetch("/dashboard/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token }),
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.ok) {
        window.location.replace("/dashboard");
        return;
      }
      const body = await response.json().catch(() => ({}));
      error.textContent = body.error || "refused: HTTP " + response.status;
    } catch (err) {
      error.textContent = "burrow did not answer: " + err.message;
    }
  });
})();
