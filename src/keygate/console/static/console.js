/* keygate console: the little behaviour the pages need. No inline script anywhere (CSP: script-src 'self'). */
"use strict";

function announce(text) {
  const status = document.getElementById("copy-status") || document.getElementById("sig-status");
  if (status) status.textContent = text;
}

/* Copy buttons: data-copy names the element whose text is copied. */
function setUpCopyButtons() {
  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      const text = source.textContent.trim();
      try {
        await navigator.clipboard.writeText(text);
        announce("Copied to the clipboard.");
      } catch (err) {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        announce("Selected: press Ctrl+C (or Cmd+C) to copy.");
      }
    });
  });
}

/* Forms marked data-once are sent once, however often the button is pressed. */
function setUpSubmitOnce() {
  document.querySelectorAll("form[data-once]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (form.dataset.sent === "yes") {
        event.preventDefault();
        return;
      }
      form.dataset.sent = "yes";
      form.setAttribute("aria-busy", "true");
    });
  });
  window.addEventListener("pageshow", () => {
    document.querySelectorAll("form[data-once]").forEach((form) => {
      delete form.dataset.sent;
      form.removeAttribute("aria-busy");
    });
  });
}

/* Buttons with data-confirm ask before their form is sent. */
function setUpConfirmations() {
  document.querySelectorAll("form").forEach((form) => {
    form.addEventListener("submit", (event) => {
      const button = event.submitter;
      if (button && button.dataset.confirm && !window.confirm(button.dataset.confirm)) {
        event.preventDefault();
        delete form.dataset.sent;
      }
    });
  });
}

/* The one-time credentials dialog: modal, cannot close before the box is ticked, exports JSON. */
function setUpCredentialsDialog() {
  const dialog = document.getElementById("credentials");
  if (!dialog) return;
  const stored = document.getElementById("stored");
  const close = document.getElementById("close-dialog");
  const data = JSON.parse(document.getElementById("credentials-data").textContent);

  if (typeof dialog.showModal === "function") {
    dialog.close();
    dialog.showModal();
  }
  const sync = () => {
    close.disabled = !stored.checked;
    close.setAttribute("aria-disabled", String(!stored.checked));
  };
  stored.addEventListener("change", sync);
  sync();
  dialog.addEventListener("cancel", (event) => {
    if (!stored.checked) {
      event.preventDefault();
      announce("Tick \u201cI have stored my credentials securely\u201d before closing.");
      stored.focus();
    }
  });

  document.getElementById("export-json").addEventListener("click", () => {
    const payload = {
      APIKey: data.APIKey,
      KeyType: data.KeyType,
      APISecret: data.APISecret,
      PublicKeyFingerprint: data.PublicKeyFingerprint,
      Nonce: data.Nonce,
      UserId: data.UserId,
      Permissions: data.Permissions,
      ReplayMode: data.ReplayMode,
      ExpiresAt: data.ExpiresAt,
      IpAllowlist: data.IpAllowlist,
      Label: data.Label,
      CreatedAt: data.CreatedAt,
      Server: window.location.origin,
    };
    const blob = new Blob([JSON.stringify(payload, null, 2) + "\n"], { type: "application/json" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "keygate-api-key-" + data.APIKey.slice(0, 8) + ".json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    announce("Exported. Keep the file somewhere safe: it holds your secret.");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpCopyButtons();
  setUpConfirmations();
  setUpSubmitOnce();
  setUpCredentialsDialog();
});
