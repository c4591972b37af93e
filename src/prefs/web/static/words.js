// Saying things the way a person would: times, fields, sizes, states.

export const FIELD_LABELS = {
  product: "Which products (name, brand and code)",
  attributes: "Sizes and details (waist, leg, colour, fit…)",
  note: "Your notes",
};
export const FIELD_WORDS = { product: "the products", attributes: "your sizes and details", note: "your notes" };
export const FIELDS = ["product", "attributes", "note"];
/** The fields in a word each, for short lists ("product, sizes"). */
export const FIELD_SHORT = { product: "product", attributes: "sizes", note: "note" };

export function listWords(words) {
  if (words.length <= 1) return words.join("");
  return `${words.slice(0, -1).join(", ")} and ${words[words.length - 1]}`;
}

// Dates and times in the page's language (<html lang>), not the browser's: the words around
// them are the page's, so "14 September 2023" must not turn into "September 14, 2023".
export const LANGUAGE = document.documentElement.lang || "en-GB";
const timeOnly = new Intl.DateTimeFormat(LANGUAGE, { hour: "2-digit", minute: "2-digit" });
const dayAndTime = new Intl.DateTimeFormat(LANGUAGE, {
  day: "numeric", month: "long", year: "numeric", hour: "2-digit", minute: "2-digit",
});
const weekday = new Intl.DateTimeFormat(LANGUAGE, { weekday: "long" });
const dayOnly = new Intl.DateTimeFormat(LANGUAGE, { day: "numeric", month: "long", year: "numeric" });
const dayWithWeekday = new Intl.DateTimeFormat(LANGUAGE, {
  weekday: "long", day: "numeric", month: "long", year: "numeric",
});
const exactly = new Intl.DateTimeFormat(LANGUAGE, { dateStyle: "long", timeStyle: "medium" });

/** "4 December 2026 at 08:30:12": a moment to the second (receipts). */
export const exactTime = (iso) => exactly.format(new Date(iso));

function startOfDay(date) {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime();
}

/** "today 14:02", "yesterday 09:15", "on Monday 10:00", "3 May 2026, 10:00". */
export function friendlyTime(iso) {
  const at = new Date(iso);
  const days = Math.round((startOfDay(new Date()) - startOfDay(at)) / 86_400_000);
  if (days === 0) return `today ${timeOnly.format(at)}`;
  if (days === 1) return `yesterday ${timeOnly.format(at)}`;
  if (days > 1 && days < 7) return `on ${weekday.format(at)} ${timeOnly.format(at)}`;
  if (days === -1) return `tomorrow ${timeOnly.format(at)}`;
  return dayAndTime.format(at);
}

/** A calendar date ("14 September 2023") from "2023-09-14". */
export function friendlyDate(isoDate) {
  const [y, m, d] = isoDate.split("-").map(Number);
  return dayOnly.format(new Date(y, m - 1, d));
}

/** "Monday 4 January 2027" from a date input's "2027-01-04". */
export function dayName(isoDate) {
  const [y, m, d] = isoDate.split("-").map(Number);
  return dayWithWeekday.format(new Date(y, m - 1, d));
}

/** "4:59" for a number of milliseconds. */
export function clock(ms) {
  const seconds = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

/** "Acme · trousers · code AC-CHINO-CLASSIC"; the code only when the product has one (a product
 * typed from memory may have none). */
export function productMeta(product) {
  return [product.brand, product.category, product.sku ? `code ${product.sku}` : null].filter(Boolean).join(" · ");
}

export const SIZE_ATTRIBUTES = ["waist", "leg", "size", "colour", "fit"];

/** "sleeve_length" → "Sleeve length". */
export function attributeLabel(name) {
  const words = name.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** A person's words for a detail's name → the API's attribute name ("Sleeve length" → "sleeve_length"). */
export function attributeName(label) {
  return label.trim().toLowerCase().replace(/[\s-]+/g, "_");
}

/** The preference's attributes in a stable order: sizes first, then the rest by name. */
export function orderedAttributes(attributes) {
  const names = Object.keys(attributes || {});
  const known = SIZE_ATTRIBUTES.filter((n) => names.includes(n));
  const rest = names.filter((n) => !SIZE_ATTRIBUTES.includes(n)).sort();
  return [...known, ...rest].map((n) => [n, attributes[n]]);
}

export const REORDER_STATES = {
  proposed: "Proposed — waiting for your answer",
  requested: "Requested — waiting to be accepted",
  accepted: "Accepted — being prepared",
  ready: "Ready to collect",
  collected: "Collected",
  fulfilled: "Fulfilled",
  declined: "Declined",
  cancelled: "Cancelled",
};

export function plural(count, one, many = `${one}s`) {
  return `${count} ${count === 1 ? one : many}`;
}

/** Give the moment a consent ends as the end of the chosen day, in the customer's time zone. */
export function endOfDay(dateValue) {
  const [y, m, d] = dateValue.split("-").map(Number);
  return new Date(y, m - 1, d, 23, 59, 59).toISOString();
}

/** The yyyy-mm-dd of a timestamp in the customer's time zone (for a date input). */
export function localDate(iso) {
  const at = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())}`;
}

/** One consent change as a sentence ("You let Stitch & Co. tailors see … until you stop it."). */
export function consentSentence(receipt) {
  const who = receipt.recipient.name;
  const what = listWords(receipt.fields.map((f) => FIELD_WORDS[f] || f));
  const which = receipt.preferences === "all" ? "all your preferences" : plural(receipt.preferences.length, "chosen preference");
  const until = receipt.expires_at ? `, until ${friendlyDate(localDate(receipt.expires_at))}` : ", until you stop it";
  if (receipt.recipient.kind === "purchases") {
    if (receipt.state === "ConsentGiven") return `You let the store tills add what you buy to your preferences${until}.`;
    if (receipt.state === "ConsentWithdrawn") return "You stopped the tills adding what you buy.";
    return "The tills stopped adding what you buy on the day you had set.";
  }
  if (receipt.state === "ConsentGiven") return `You let ${who} see ${what} in ${which}${until}.`;
  if (receipt.state === "ConsentWithdrawn") return `You stopped sharing with ${who}.`;
  return `Sharing with ${who} ended on the day you had set.`;
}

/** The audiences a consent lets see preferences (not the tills adding purchases, not the
 * anonymous counts, which show nobody a preference). */
export const SEEING = (audience) => audience === "pos" || audience.startsWith("partner:");

/** Who may see ``preference`` under ``consents``: [{audience, name, fields}], tills first. */
export function whoMaySee(preference, consents) {
  return consents
    .filter((c) => SEEING(c.audience) && (c.preferences === "all" || c.preferences.includes(preference.id)))
    .map((c) => ({ audience: c.audience, name: c.audience === "pos" ? "Store tills" : c.recipient, fields: c.fields }))
    .sort((a, b) => (a.audience === "pos" ? -1 : b.audience === "pos" ? 1 : a.name.localeCompare(b.name, LANGUAGE)));
}
