// Saying things the way a person would: times, fields, sizes, states.

export const FIELD_LABELS = {
  product: "Which products (name, brand and code)",
  attributes: "Sizes and details (waist, leg, colour, fit…)",
  note: "Your notes",
};
export const FIELD_WORDS = { product: "which products", attributes: "your sizes and details", note: "your notes" };
export const FIELDS = ["product", "attributes", "note"];

export function listWords(words) {
  if (words.length <= 1) return words.join("");
  return `${words.slice(0, -1).join(", ")} and ${words[words.length - 1]}`;
}

const timeOnly = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayAndTime = new Intl.DateTimeFormat(undefined, {
  day: "numeric", month: "long", year: "numeric", hour: "2-digit", minute: "2-digit",
});
const weekday = new Intl.DateTimeFormat(undefined, { weekday: "long" });
const dayOnly = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "long", year: "numeric" });

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

/** "4:59" for a number of milliseconds. */
export function clock(ms) {
  const seconds = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
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
