// chatd's browser client, part 4 of 6 (web/mod.rs joins them into the page's one script):
// messages that change. A message shows "(edited)", a deleted one "message deleted", a reply
// quotes the first line of what it answers (a click scrolls to it), reactions are chips with
// counts (a click toggles one's own); a menu on a message offers reply, react, and on one's own
// edit and delete (ops delete anyone's). ↑ in an empty box edits one's last message. The
// `edited`, `deleted` and `reaction` events (live, in history, on resume) change what is shown.
const chatdChanges = ({ st, send, note, errorText, currentConv }) => {
  const { clean, h } = chatdKit;
  const QUICK = ['👍', '🎉', '😄', '👀', '❤️'];
  /** What the composer is doing: replying to or editing a message ({ c, id, li }), or nothing. */
  const composing = { reply: null, edit: null };

  const nodeOf = (c, id) => c.nodes.find((n) => n.dataset.id === String(id) && n.classList.contains('msg'));
  const firstLine = (text) => { const t = clean(text).split('\n')[0]; return t.length > 80 ? `${t.slice(0, 79)}…` : t; };

  /** Adds a message's state to its node: the reply quote, (edited), a tombstone, reactions,
   *  and its menu. `m` is a `message` (live or from history). */
  function decorate(li, m, c) {
    li.dataset.from = clean(m.from || '');
    if (m.reply_to) {
      const orig = c ? nodeOf(c, m.reply_to) : null;
      const quoted = orig ? `${orig.dataset.from}: ${firstLine(orig.querySelector('.text').textContent)}` : `message ${m.reply_to}`;
      const q = h('button', { type: 'button', class: 'quote plain', title: 'Show the message this answers', text: `↪ ${quoted}` });
      q.addEventListener('click', () => { const o = c && nodeOf(c, m.reply_to); if (o) { o.scrollIntoView({ block: 'center' }); o.classList.add('flash'); setTimeout(() => o.classList.remove('flash'), 1200); } });
      li.prepend(q);
    }
    if (m.deleted) tombstone(li);
    else if (m.edited_ts) edited(li);
    li.reactions = new Map((m.reactions || []).map((r) => [clean(r.emoji), { count: r.count, me: !!r.me }]));
    chips(li, c);
    if (c && m.id && !m.deleted && (c.kind === 'room' || li.dataset.from === st.name)) li.append(menu(li, c));
  }

  function edited(li) {
    if (!li.querySelector('.edited')) li.querySelector('.text').after(h('span', { class: 'edited', text: ' (edited)' }));
  }
  function tombstone(li) {
    li.classList.add('deleted');
    const text = li.querySelector('.text');
    text.replaceChildren('message deleted');
    for (const el of li.querySelectorAll('.edited, .reactions, .msg-menu')) el.remove();
    li.reactions = new Map();
  }

  /** The reaction chips under a message. */
  function chips(li, c) {
    const old = li.querySelector('.reactions');
    if (old) old.remove();
    if (!li.reactions || !li.reactions.size) return;
    const row = h('span', { class: 'reactions' });
    for (const [emoji, r] of li.reactions) {
      row.append(h('button', {
        type: 'button', class: `chip${r.me ? ' mine' : ''}`, 'aria-pressed': String(r.me),
        title: r.me ? 'Take your reaction back' : 'React with this too',
        onclick: () => react(c, li, emoji, !r.me),
      }, `${emoji} ${r.count}`));
    }
    const menuEl = li.querySelector('.msg-menu');
    if (menuEl) li.insertBefore(row, menuEl); else li.append(row);
  }

  function react(c, li, emoji, on) {
    if (!c) return;
    send({ type: 'react', room: c.name, msg: Number(li.dataset.id), emoji, on }, (r) => {
      if (r.type === 'ack') { if (!r.seq) return; applyReaction(li, emoji, st.name, on); chips(li, c); } else note(c, errorText(r), 'error');
    });
  }

  /** The menu on a message: reply, react, and edit and delete where the viewer may (its items
   *  made when it opens: they are no part of the message's text). */
  function menu(li, c) {
    const details = h('details', { class: 'member-menu msg-menu' },
      h('summary', { title: 'Reply, react, edit, delete', 'aria-label': 'Message actions' }),
      h('ul', { role: 'menu' }));
    details.addEventListener('toggle', () => {
      const ul = details.querySelector('ul');
      if (details.open) ul.replaceChildren(...items(li, c)); else ul.replaceChildren();
    });
    return details;
  }
  function items(li, c) {
    const own = li.dataset.from === st.name;
    const items = [];
    const item = (text, act) => items.push(h('li', {}, h('button', {
      type: 'button', class: 'plain', onclick: (e) => { e.target.closest('details').open = false; act(); },
    }, text)));
    if (c.kind === 'room') {
      item('Reply', () => startReply(c, li));
      for (const e of QUICK) item(`React ${e}`, () => react(c, li, e, !(li.reactions.get(e) || {}).me));
    }
    if (own) item('Edit', () => startEdit(c, li));
    const op = c.roles && ['op', 'owner'].includes(c.roles.get(st.name.toLowerCase()));
    const admin = c.members && c.members.get(st.name) === 'admin';
    if (own || op || admin) item('Delete', () => remove(c, li));
    return items;
  }

  /** Where a change goes: the room, or the conversation. */
  const at = (c) => (c.kind === 'room' ? { room: c.name } : { with: c.name });
  function remove(c, li) {
    send({ type: 'delete', ...at(c), msg: Number(li.dataset.id) }, (r) => {
      if (r.type === 'ack') tombstone(li); else note(c, errorText(r), 'error');
    });
  }

  const bar = () => document.getElementById('composing');
  function showBar(text) {
    const b = bar();
    b.hidden = !text;
    b.querySelector('span').textContent = text || '';
  }
  function cancel() { composing.reply = null; composing.edit = null; showBar(''); }
  function startReply(c, li) {
    composing.edit = null;
    composing.reply = { c, id: Number(li.dataset.id) };
    showBar(`Replying to ${li.dataset.from}: ${firstLine(li.querySelector('.text').textContent)}`);
    document.getElementById('message').focus();
  }
  function startEdit(c, li) {
    composing.reply = null;
    composing.edit = { c, id: Number(li.dataset.id), li };
    showBar('Editing your message (Esc to cancel)');
    const box = document.getElementById('message');
    box.value = li.querySelector('.text').textContent;
    box.focus();
  }
  /** ↑ in an empty box: edit one's last message in the room on screen. */
  function editLast() {
    const c = currentConv();
    if (!c) return false;
    const mine = [...c.nodes].reverse().find((n) => n.classList.contains('msg') && n.dataset.from === st.name && n.dataset.id && !n.classList.contains('deleted'));
    if (!mine) return false;
    startEdit(c, mine);
    return true;
  }
  /** What a submitted line does while replying or editing: the request's extra fields, or the
   *  edit sent (true). */
  function submit(c, text) {
    if (composing.edit && composing.edit.c === c) {
      const { id, li } = composing.edit;
      cancel();
      send({ type: 'edit', ...at(c), msg: id, text }, (r) => {
        if (r.type === 'ack') { li.querySelector('.text').replaceChildren(...chatdKit.linkify(clean(text))); edited(li); } else note(c, errorText(r), 'error');
      });
      return true;
    }
    return false;
  }
  /** The message the composer answers in `c`, if any (kept until the line is sent). */
  function replying(c) { return composing.reply && composing.reply.c === c ? composing.reply.id : null; }
  /** One's own message was acknowledged (it has an id now): it gets its menu. */
  function sent(li, c) { if (!li.querySelector('.msg-menu')) li.append(menu(li, c)); }
  function replyFields(c) {
    if (!composing.reply || composing.reply.c !== c) return {};
    const id = composing.reply.id;
    cancel();
    return { reply_to: id };
  }

  function applyReaction(li, emoji, from, on) {
    const r = li.reactions.get(emoji) || { count: 0, me: false };
    const mine = from === st.name;
    if (mine && r.me === on) return;
    r.count += on ? 1 : -1;
    if (mine) r.me = on;
    if (r.count <= 0) li.reactions.delete(emoji); else li.reactions.set(emoji, r);
  }

  /** An `edited`, `deleted` or `reaction` event (live, in a welcome, or in a page): changes
   *  the message if it is shown. A page lists messages as they are now, so a change in the same
   *  page as its message (`fresh`: the page's message ids) is already in it. False if `m` is not
   *  a change. */
  function event(c, m, fresh = null) {
    if (!['edited', 'deleted', 'reaction'].includes(m.type)) return false;
    if (!c) return true;
    if (m.seq) {
      if (c.seqs.has(m.seq)) return true;
      c.seqs.add(m.seq);
      if (!c.catching) c.lastSeq = Math.max(c.lastSeq, m.seq);
    }
    const li = nodeOf(c, m.msg);
    if (!li || (fresh && fresh.has(m.msg))) return true;
    if (m.type === 'edited' && !li.classList.contains('deleted')) {
      li.querySelector('.text').replaceChildren(...chatdKit.linkify(clean(m.text)));
      edited(li);
    } else if (m.type === 'deleted') {
      tombstone(li);
    } else if (m.type === 'reaction') {
      applyReaction(li, clean(m.emoji), clean(m.from), m.on);
      chips(li, c);
    }
    return true;
  }

  document.getElementById('composing-cancel').addEventListener('click', cancel);
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && (composing.edit || composing.reply)) cancel(); });

  return { decorate, event, editLast, submit, replying, replyFields, sent };
};
