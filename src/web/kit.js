// chatd's browser client, part 1 of 6 (web/mod.rs joins them into the page's one script):
// what the client needs that is not the chat itself. Received text is made harmless here
// (`clean`) and turned into nodes as text, never markup (`h`); times, links, mentions, and the
// pacing bucket.
'use strict';
const chatdKit = (() => {
  const $ = (id) => document.getElementById(id);
  const BIDI = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;
  const CONTROL = /[\u0000-\u0008\u000B-\u001F\u007F-\u009F]/g;
  // What shows nothing but changes a text (zero-width space, word joiner, invisible operators, BOM,
  // tag characters that can smuggle ASCII) is shown as its code point, like chatctl does.
  // Joiners stay where they join something (emoji, Persian or Indic words): only beside ASCII are
  // they shown; tag characters stay inside a subdivision flag (U+1F3F4, tags, U+E007F).
  const HIDDEN = /\u{1F3F4}[\u{E0020}-\u{E007E}]+\u{E007F}|[\u200B\u2060-\u2064\uFEFF\u180E\u{E0000}-\u{E007F}]|(?<=[\x00-\x7F]|^)[\u200C\u200D]|[\u200C\u200D](?=[\x00-\x7F]|$)/gu;
  const codePoint = (c) => `⟨U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')}⟩`;
  const reveal = (s) => s.replace(HIDDEN, (m) => (m.length > 2 && m.codePointAt(0) === 0x1F3F4 ? m : codePoint(m)));
  /** Received text made harmless to show: no bidi overrides, no control characters, nothing hidden. */
  const clean = (s) => reveal(String(s ?? '').replace(BIDI, '').replace(CONTROL, '\uFFFD'));

  /** An element; `kids` are nodes or strings (strings become Text nodes, never markup). */
  function h(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat()) if (kid !== null && kid !== undefined && kid !== false) e.append(kid);
    return e;
  }

  const ERRORS = {
    hello_required: 'Not signed in yet; reconnecting should fix it.',
    already_welcomed: 'Already signed in on this connection.',
    name_invalid: 'That name is not allowed: 1–32 letters, digits, _ . or -, not a reserved name.',
    name_taken: 'That name is taken; pick another.',
    room_invalid: 'Room names use letters, digits, _ . and - (up to 32).',
    no_such_room: 'There is no such room.',
    not_in_room: 'You are not in that room.',
    no_such_user: 'Nobody by that name is here.',
    too_many_rooms: 'Too many rooms: leave one first (or the server is full).',
    rate_limited: 'Slow down: the server limits how fast you can send.',
    bad_request: 'The server could not accept that.',
    unknown_type: 'The server does not know that request.',
    unauthorized: 'Not signed in: wrong name or password, or a token the server did not accept.',
    forbidden: 'Not allowed.',
    unavailable: 'The server could not do that.',
    unconfirmed: 'Not confirmed in time: it may have been sent. Check the conversation before sending it again.',
    too_many_sessions: 'You are connected from too many places at once; close one first.',
    not_found: 'There is no such thing (it may have gone already).',
  };
  const errorText = (e) => `${ERRORS[e.code] || 'Error.'} (${clean(e.message)})`;

  // ---- time --------------------------------------------------------------------------------
  const sameDay = (a, b) => a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
  const hm = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric', month: 'short' });
  const yearFmt = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', year: 'numeric' });
  const longFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
  const headFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full' });
  function when(ts) {
    const d = ts ? new Date(ts) : new Date();
    const now = new Date();
    let label = hm.format(d);
    if (!sameDay(d, now)) label = `${(d.getFullYear() === now.getFullYear() ? dayFmt : yearFmt).format(d)} ${label}`;
    return { d, el: h('time', { datetime: d.toISOString(), title: longFmt.format(d), text: label }) };
  }

  // ---- text --------------------------------------------------------------------------------
  const URL_RE = /\bhttps?:\/\/[^\s<>"']+/g;
  /** Text with http(s) links made clickable; everything else stays text. */
  function linkify(text) {
    const out = [];
    let last = 0;
    for (const m of text.matchAll(URL_RE)) {
      let raw = m[0].replace(/[.,;:!?)\]]+$/, '');
      let url = null;
      try { url = new URL(raw); } catch (_) { url = null; }
      if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) continue;
      out.push(text.slice(last, m.index));
      out.push(h('a', { href: url.href, rel: 'noopener noreferrer', target: '_blank', text: raw }));
      last = m.index + raw.length;
    }
    out.push(text.slice(last));
    return out;
  }
  const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  function mentions(text, name) {
    if (!name) return false;
    return new RegExp(`(^|[^A-Za-z0-9_.-])${escapeRe(name)}($|[^A-Za-z0-9_])`, 'i').test(text);
  }
  const utf8 = new TextEncoder();

  // ---- pacing (under the rates the server advertises, as chatctl does) ---------------------
  class Bucket {
    constructor(rate, burst) {
      this.rate = rate > 0 ? rate * 0.9 : 0;
      this.burst = Math.max(1, (burst || 1) - 2);
      this.tokens = this.burst;
      this.at = performance.now();
    }
    /** 0 when a send may go now (and takes a token), else how many ms to wait. */
    take() {
      if (!this.rate) return 0;
      const now = performance.now();
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.rate);
      this.at = now;
      if (this.tokens >= 1) { this.tokens -= 1; return 0; }
      return Math.ceil(((1 - this.tokens) / this.rate) * 1000);
    }
  }

  return { $, clean, h, ERRORS, errorText, headFmt, when, linkify, mentions, utf8, Bucket };
})();
