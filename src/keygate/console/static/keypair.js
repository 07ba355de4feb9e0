/* keygate console: Ed25519 key pairs made in the browser (WebCrypto), for the create-key page.
   The private key never leaves this page except as the file the user downloads: the form sends only
   the public key (its 32 raw bytes, base64). No inline script anywhere (CSP: script-src 'self'). */
"use strict";

function toBase64(bytes) {
  let text = "";
  new Uint8Array(bytes).forEach((b) => { text += String.fromCharCode(b); });
  return btoa(text);
}

function pem(label, der) {
  const body = toBase64(der).match(/.{1,64}/g).join("\n");
  return "-----BEGIN " + label + "-----\n" + body + "\n-----END " + label + "-----\n";
}

function download(name, type, text) {
  const blob = new Blob([text], { type });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function setUpKeyPair() {
  const form = document.querySelector("form[data-once]");
  const fields = document.getElementById("ed25519-fields");
  const generate = document.getElementById("generate-keypair");
  if (!form || !fields || !generate) return;
  const radios = document.querySelectorAll("input[name=key_type]");
  const publicKey = document.getElementById("public_key");
  const exportPanel = document.getElementById("private-key-export");
  const stored = document.getElementById("private-stored");
  const status = document.getElementById("keypair-status");
  const submit = document.getElementById("submit-key");
  let made = null; /* {jwk, pkcs8Pem, publicB64} of the pair made here, until the page goes */

  const chosen = () => (document.querySelector("input[name=key_type]:checked") || {}).value;
  const sync = () => {
    const ed = chosen() === "ed25519";
    fields.hidden = !ed;
    publicKey.disabled = !ed;
    /* A pair made here must be stored before the key is created: this page is its only chance. */
    const waiting = ed && made !== null && !stored.checked;
    submit.disabled = waiting;
    submit.setAttribute("aria-disabled", String(waiting));
  };
  radios.forEach((r) => r.addEventListener("change", sync));
  stored.addEventListener("change", sync);

  if (!(window.crypto && window.crypto.subtle)) {
    generate.disabled = true;
    generate.title = "This browser offers no WebCrypto here: paste a public key instead";
  }

  generate.addEventListener("click", async () => {
    try {
      const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
      const raw = await crypto.subtle.exportKey("raw", pair.publicKey);
      const pkcs8 = await crypto.subtle.exportKey("pkcs8", pair.privateKey);
      const jwk = await crypto.subtle.exportKey("jwk", pair.privateKey);
      made = { jwk, pkcs8Pem: pem("PRIVATE KEY", pkcs8), publicB64: toBase64(raw) };
      publicKey.value = made.publicB64;
      publicKey.readOnly = true;
      exportPanel.hidden = false;
      stored.checked = false;
      generate.disabled = true;
      status.textContent = "Key pair made. Download the private key, then tick the box.";
      sync();
    } catch (err) {
      status.textContent = "This browser cannot make Ed25519 keys: paste a public key instead.";
      exportPanel.hidden = false;
    }
  });

  document.getElementById("download-private-json").addEventListener("click", () => {
    if (!made) return;
    const payload = {
      KeyType: "ed25519",
      PrivateKeyJwk: made.jwk,
      PrivateKeyPem: made.pkcs8Pem,
      PublicKey: made.publicB64,
      Server: window.location.origin,
    };
    download("keygate-ed25519-private-key.json", "application/json", JSON.stringify(payload, null, 2) + "\n");
    status.textContent = "Downloaded. Keep the file somewhere safe: it signs as you.";
  });
  document.getElementById("download-private-pem").addEventListener("click", () => {
    if (!made) return;
    download("keygate-ed25519-private-key.pem", "application/x-pem-file", made.pkcs8Pem);
    status.textContent = "Downloaded. Keep the file somewhere safe: it signs as you.";
  });

  form.addEventListener("submit", (event) => {
    if (chosen() === "ed25519" && made !== null && !stored.checked) {
      event.preventDefault();
      delete form.dataset.sent;
      status.textContent = "Tick \u201cI have stored my private key securely\u201d first.";
      stored.focus();
    }
  });
  sync();
}

document.addEventListener("DOMContentLoaded", setUpKeyPair);
