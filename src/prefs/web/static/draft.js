// What the customer was typing, kept across a trip through sign-in (this tab only): the forms
// open in the view, by the button that opened each, and each field by its label.

const KEY = "prefs.draft";

function storage() {
  try { return window.sessionStorage; } catch { return null; }
}

function labelled(form) {
  const seen = new Map();
  return [...form.querySelectorAll("input, textarea, select")]
    .filter((field) => field.id && field.type !== "search")
    .map((field) => {
      const label = document.querySelector(`label[for="${CSS.escape(field.id)}"]`);
      const name = (label?.textContent || field.id).trim();
      const count = (seen.get(name) || 0) + 1;
      seen.set(name, count);
      return [`${name}#${count}`, field];
    });
}

/** Keep the open forms of ``view`` (those a button opened: data-opener) and what they hold. */
export function keep(view) {
  const forms = [...document.querySelectorAll("#view form[data-opener]")].map((form) => ({
    opener: form.dataset.opener,
    fields: labelled(form).map(([name, field]) => [name,
      field.type === "checkbox" || field.type === "radio" ? field.checked : field.value]),
  }));
  storage()?.setItem(KEY, JSON.stringify({ view, forms }));
}

/** The draft kept before sign-in, once (it is forgotten as it is taken). */
export function take() {
  const kept = storage()?.getItem(KEY);
  storage()?.removeItem(KEY);
  try { return kept ? JSON.parse(kept) : null; } catch { return null; }
}

/** Open the forms again and put back what was typed; true when something was put back. */
export async function restore(draft) {
  let restored = false;
  for (const saved of draft.forms || []) {
    if (!document.querySelector(`#view form[data-opener="${CSS.escape(saved.opener)}"]`)) {
      document.getElementById(saved.opener)?.click();
      await new Promise((resolve) => window.setTimeout(resolve, 0));
    }
    const form = document.querySelector(`#view form[data-opener="${CSS.escape(saved.opener)}"]`);
    if (!form) continue;
    const fields = new Map(labelled(form));
    for (const [name, value] of saved.fields) {
      const field = fields.get(name);
      if (!field) continue;
      if (typeof value === "boolean") field.checked = value;
      else field.value = value;
      restored = true;
    }
  }
  return restored;
}
