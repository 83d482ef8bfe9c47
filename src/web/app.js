// chatd's browser client, part 6 of 6: the protocol of docs/PROTOCOL.md over one WebSocket to
// this origin (part 1, kit.js, has the text and time helpers; part 2, unread.js, what is unread;
// part 3, rooms.js, rooms that belong to someone; part 4, changes.js, messages that change;
// part 5, signin.js, the sign-in form).
// Everything anyone else wrote is inserted as text (textContent, Text nodes), never as HTML.
// (Strict mode: kit.js's 'use strict' opens the script.)
(() => {
  const { $, clean, h, ERRORS, errorText, headFmt, when, linkify, mentions, utf8, Bucket } = chatdKit;

  // ---- state -------------------------------------------------------------------------------
  const st = {
    ws: null, name: '', wanted: '', token: '', password: '', register: false, invite: '', home: 'lobby', server: null, online: false,
    welcomed: false, stopped: false, attempt: 0, retry: null, altTries: 0, restarting: false,
    convs: new Map(), current: null, replies: new Map(), nextId: 1,
    outbox: [], pumpTimer: null, pace: new Bucket(0, 1), typingPace: new Bucket(0, 1),
    typing: { key: null, state: 'done', at: 0, idle: null }, knownRooms: [],
  };
  const MAX_NODES = 1500;
  /** Members a room keeps listed (the welcome's page plus later joiners); the rest are counted. */
  const MEMBERS_SHOWN = 500;
  const roomKey = (name) => `room:${name}`;
  const pmKey = (name) => `pm:${name.toLowerCase()}`;

  function conv(key, kind, name) {
    let c = st.convs.get(key);
    if (!c) {
      c = {
        key, kind, name, nodes: [], seqs: new Set(), ids: new Set(), lastSeq: 0, epoch: null,
        oldest: null, more: false, loading: false, catching: false, catchFrom: 0, unread: 0,
        mention: false, members: new Map(), userCount: 0, typing: new Map(), lastDay: null,
      };
      st.convs.set(key, c);
      renderRooms();
    }
    return c;
  }
  const currentConv = () => st.convs.get(st.current);

  // ---- sending -----------------------------------------------------------------------------
  /** Queues a request (paced, in order); `reply` gets its direct reply. */
  function send(msg, reply) {
    const id = `w${st.nextId++}`;
    msg.id = id;
    if (reply) st.replies.set(id, reply);
    st.outbox.push(msg);
    pump();
    return id;
  }
  function pump() {
    if (st.pumpTimer) return;
    while (st.outbox.length && st.ws && st.ws.readyState === WebSocket.OPEN) {
      const first = st.outbox[0];
      if (first.type !== 'hello' && first.type !== 'register' && !st.welcomed) return;
      const wait = st.pace.take();
      if (wait) { st.pumpTimer = setTimeout(() => { st.pumpTimer = null; pump(); }, wait); return; }
      st.outbox.shift();
      st.ws.send(JSON.stringify(first));
    }
  }
  /** Typing is best effort: sent only when the typing rate allows, never queued. */
  function sendTyping(target, state) {
    if (!st.welcomed || !st.ws || st.ws.readyState !== WebSocket.OPEN) return;
    if (st.typingPace.take()) return;
    st.ws.send(JSON.stringify(Object.assign({ type: 'typing', state }, target)));
  }
  const targetOf = (c) => (c.kind === 'room' ? { room: c.name } : { to: c.name });

  // ---- rendering messages ------------------------------------------------------------------
  const list = $('messages');
  const scroller = $('scroller');
  function nearBottom() { return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80; }
  function toBottom() { scroller.scrollTop = scroller.scrollHeight; }

  function dayNode(d) { return h('li', { class: 'day system', 'data-day': d.toDateString(), text: headFmt.format(d) }); }

  function messageNode(m, c) {
    const { d, el } = when(m.ts);
    const from = clean(m.from);
    const text = clean(m.text);
    const own = from === st.name;
    const mention = !own && mentions(text, st.name);
    const li = h('li', {
      class: ['msg', own && 'own', mention && 'mention', m.action && 'action'].filter(Boolean).join(' '),
      'data-seq': m.seq ?? null, 'data-id': m.id ?? null, 'data-day': d.toDateString(),
    }, el, h('span', { class: 'from', text: from }),
    m.role === 'admin' ? h('span', { class: 'role', text: 'admin' }) : null, ' ',
    h('bdi', { class: 'text' }, linkify(text)));
    li.dataset.mention = mention ? '1' : '';
    changes.decorate(li, m, c);
    return { li, d, mention };
  }
  function systemNode(text, cls = 'system') { return h('li', { class: cls }, clean(text)); }

  /** Adds nodes at the end of a conversation (a day line first when the date changes). */
  function append(c, li, d) {
    const follow = st.current === c.key && nearBottom();
    const nodes = [];
    if (d && c.lastDay !== d.toDateString()) {
      if (c.lastDay !== null || c.nodes.length) nodes.push(dayNode(d));
      c.lastDay = d.toDateString();
    }
    nodes.push(li);
    c.nodes.push(...nodes);
    if (st.current === c.key) list.append(...nodes);
    trim(c);
    if (follow) toBottom();
  }
  /** Inserts a message by seq (a catch-up page can arrive after live messages). */
  function insertBySeq(c, li, d, seq) {
    let i = c.nodes.length;
    while (i > 0) {
      const s = Number(c.nodes[i - 1].dataset.seq || 0);
      if (s && s < seq) break;
      i--;
    }
    if (i === c.nodes.length) return append(c, li, d);
    const before = c.nodes[i];
    c.nodes.splice(i, 0, li);
    if (st.current === c.key) list.insertBefore(li, before);
  }
  function trim(c) {
    if (c.nodes.length <= MAX_NODES) return;
    const gone = c.nodes.splice(0, c.nodes.length - MAX_NODES);
    for (const n of gone) { n.remove(); if (n.dataset.seq) c.seqs.delete(Number(n.dataset.seq)); }
    const first = c.nodes.find((n) => n.dataset.seq);
    c.oldest = first ? Number(first.dataset.seq) : c.oldest;
    c.more = true;
    updateOlder();
  }
  /** A stored message (room or PM) shown once: by seq in rooms, by id in PMs. */
  function showMessage(c, m, { live = true, inOrder = false } = {}) {
    if (c.kind === 'room' && m.seq) {
      if (c.seqs.has(m.seq)) return;
      c.seqs.add(m.seq);
      if (!c.catching) c.lastSeq = Math.max(c.lastSeq, m.seq);
      if (c.oldest === null || m.seq < c.oldest) c.oldest = m.seq;
    } else if (m.id) {
      if (c.ids.has(m.id)) return;
      c.ids.add(m.id);
      if (c.oldest === null || m.id < c.oldest) c.oldest = m.id;
    }
    const { li, d, mention } = messageNode(m, c);
    if (inOrder && m.seq) insertBySeq(c, li, d, m.seq); else append(c, li, d);
    c.typing.delete(clean(m.from));
    if (st.current === c.key) renderTyping();
    if (live && clean(m.from) !== st.name) notice(c, m, mention);
    if (live) markRead(c);
  }
  /** Older messages, oldest first, put before everything shown. */
  function prepend(c, messages) {
    const fresh = [];
    let prevDay = null;
    for (const m of messages) {
      const key = c.kind === 'room' ? m.seq : m.id;
      const seen = c.kind === 'room' ? c.seqs : c.ids;
      if (!key || seen.has(key)) continue;
      seen.add(key);
      const { li, d } = messageNode(m, c);
      if (prevDay !== d.toDateString()) fresh.push(dayNode(d));
      prevDay = d.toDateString();
      fresh.push(li);
      if (c.oldest === null || key < c.oldest) c.oldest = key;
    }
    if (!fresh.length) return;
    // The day line the old first message had is now inside the day (or repeated).
    const first = c.nodes[0];
    if (first && first.classList.contains('day') && first.dataset.day === prevDay) {
      c.nodes.shift(); first.remove();
    }
    if (c.lastDay === null) c.lastDay = prevDay;
    const height = scroller.scrollHeight;
    c.nodes.unshift(...fresh);
    if (st.current === c.key) {
      list.prepend(...fresh);
      scroller.scrollTop += scroller.scrollHeight - height;
    }
  }
  function note(c, text, cls) { if (c) append(c, systemNode(text, cls), new Date()); }
  function noteHere(text, cls) {
    const c = currentConv();
    if (c) note(c, text, cls); else $('login-error').textContent = text;
  }

  // ---- unread, mentions, notifications (unread.js) ----------------------------------------
  const { notice, markRead, syncRead, updateTitle, keptRooms, keptConversations } = chatdUnread({ st, send, nearBottom, currentConv, renderRooms });
  // ---- rooms that belong to someone (rooms.js) ---------------------------------------------
  const rooms = chatdRooms({ st, send, note, errorText, renderRooms: () => renderRooms(), renderMembers: () => renderMembers() });
  const changes = chatdChanges({ st, send, note: (c, t, cls) => note(c, t, cls), errorText, currentConv: () => currentConv() });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) {
      const c = currentConv();
      if (c) { c.unread = 0; c.mention = false; renderRooms(); markRead(c); }
      updateTitle();
    }
  });
  $('notify').addEventListener('click', () => {
    Notification.requestPermission().then(() => { $('notify').hidden = Notification.permission !== 'default'; });
  });

  // ---- panes -------------------------------------------------------------------------------
  function renderRooms() {
    const ul = $('rooms');
    ul.replaceChildren();
    const sorted = [...st.convs.values()].sort((a, b) => (a.kind === b.kind ? 0 : a.kind === 'room' ? -1 : 1));
    for (const c of sorted) {
      const badge = c.unread
        ? h('span', { class: `badge${c.mention ? ' mention' : ''}`, 'aria-label': `${c.unread} unread${c.mention ? ', mentions you' : ''}`, text: String(c.unread) })
        : null;
      const btn = h('button', { type: 'button', class: 'plain', 'aria-current': st.current === c.key ? 'true' : null, onclick: () => { select(c.key); closePanes(); } },
        rooms.label(c), badge);
      ul.append(h('li', { class: st.current === c.key ? 'current' : '' }, btn));
    }
  }
  function renderMembers() {
    const ul = $('members');
    ul.replaceChildren();
    const c = currentConv();
    if (!c) return;
    const names = c.kind === 'room' ? [...c.members.entries()] : [[st.name, 'user'], [c.name, 'user']];
    names.sort((a, b) => a[0].localeCompare(b[0], undefined, { sensitivity: 'base' }));
    for (const [name, role] of names) {
      const me = name === st.name;
      const who = me ? h('span', { text: `${name} (you)` })
        : h('button', { type: 'button', class: 'plain', title: `Message ${name} privately`, onclick: () => { openPm(name); closePanes(); } }, name);
      ul.append(h('li', {}, who, role === 'admin' ? h('span', { class: 'role', text: 'admin' }) : null, rooms.mark(c, name), rooms.menu(c, name)));
    }
    const more = c.kind === 'room' && c.userCount > c.members.size ? c.userCount - c.members.size : 0;
    if (more) ul.append(h('li', { class: 'system', text: `and ${more} more` }));
    $('members-title').textContent = c.kind === 'room' ? `Members (${Math.max(c.userCount, c.members.size)})` : 'Members';
  }
  function renderTyping() {
    const c = currentConv();
    const el = $('typing');
    if (!c) { el.textContent = ''; return; }
    const now = Date.now();
    const active = [];
    for (const [name, t] of c.typing) {
      if (t.until < now) c.typing.delete(name);
      else if (t.state === 'active') active.push(name);
    }
    el.textContent = active.length === 0 ? ''
      : active.length === 1 ? `${active[0]} is typing…`
        : active.length === 2 ? `${active[0]} and ${active[1]} are typing…`
          : `${active.length} people are typing…`;
  }
  setInterval(renderTyping, 1000);
  function updateOlder() {
    const c = currentConv();
    const b = $('older');
    b.hidden = !(c && c.more);
    b.replaceChildren();
    if (c && c.more) {
      b.append(c.loading ? 'Loading older messages…'
        : h('button', { type: 'button', class: 'plain', onclick: () => loadOlder(c) }, 'Load older messages'));
    }
  }

  function select(key) {
    const c = st.convs.get(key);
    if (!c) return;
    const before = currentConv();
    if (before && before !== c && st.typing.state !== 'done') stopTyping();
    st.current = key;
    c.unread = 0;
    c.mention = false;
    // Switching is not news: keep screen readers from reading the whole conversation.
    list.setAttribute('aria-live', 'off');
    list.replaceChildren(...c.nodes);
    requestAnimationFrame(() => list.setAttribute('aria-live', 'polite'));
    $('room-title').textContent = c.kind === 'room' ? `#${c.name}` : `Private: ${c.name}`;
    $('room-topic').textContent = rooms.topicLine(c);
    $('leave').textContent = c.kind === 'room' ? `Leave #${c.name}` : 'Close';
    $('message').placeholder = c.kind === 'room' ? `Message #${c.name}` : `Message ${c.name}`;
    renderRooms(); renderMembers(); renderTyping(); updateOlder(); updateTitle();
    toBottom();
    markRead(c);
    if (c.kind === 'pm' && !c.asked) { c.asked = true; loadOlder(c, true); }
  }

  // ---- server messages ---------------------------------------------------------------------
  function applyView(v) {
    const c = conv(roomKey(v.room), 'room', v.room);
    c.members = new Map((v.users || []).map((u) => [clean(u.name), u.role]));
    rooms.apply(c, v);
    c.userCount = v.user_count || c.members.size;
    const had = c.epoch !== null;
    if (had && v.epoch !== c.epoch) {
      // The room's numbering restarted: what we hold is from before.
      c.seqs.clear(); c.lastSeq = 0;
      note(c, `#${v.room} was reset on the server; the history below is from before.`);
    }
    c.epoch = v.epoch;
    if (v.resumed === false && had) note(c, `Some messages in #${v.room} may have been missed while you were away.`, 'system error');
    const [history, later] = [(v.history || []).filter((m) => m.type === 'message'), (v.history || []).filter((m) => m.type !== 'message')];
    if (v.resumed === true && v.more) {
      c.catching = true;
      c.catchFrom = c.lastSeq;
    }
    for (const m of history) showMessage(c, m, { live: false, inOrder: true });
    for (const m of later) changes.event(c, m, new Set(history.map((h) => h.id)));
    if (c.catching) {
      const last = history.length ? history[history.length - 1].seq : c.catchFrom;
      c.catchFrom = Math.max(c.catchFrom, last);
      catchUp(c);
    } else {
      c.lastSeq = Math.max(c.lastSeq, v.seq || 0);
    }
    if (!had) c.more = history.length ? history[0].seq > 1 : false;
    if (st.current === c.key) { renderMembers(); updateOlder(); }
    return c;
  }
  function catchUp(c) {
    send({ type: 'history', room: c.name, after: c.catchFrom, limit: 100 }, (r) => {
      if (r.type !== 'history') { c.catching = false; return; }
      const fresh = new Set((r.messages || []).filter((m) => m.type === 'message').map((m) => m.id));
      for (const m of r.messages || []) {
        if (!changes.event(c, m, fresh)) showMessage(c, m, { live: false, inOrder: true });
        c.catchFrom = Math.max(c.catchFrom, m.seq);
      }
      if (r.more && (r.messages || []).length) return catchUp(c);
      c.catching = false;
      c.lastSeq = Math.max(c.lastSeq, ...c.seqs);
    });
  }
  function loadOlder(c, first = false) {
    if (c.loading || (!first && !c.more)) return;
    c.loading = true;
    updateOlder();
    const req = c.kind === 'room'
      ? { type: 'history', room: c.name, limit: 50 }
      : { type: 'history', with: c.name, limit: 50 };
    if (c.oldest !== null && !first) req.before = c.oldest;
    send(req, (r) => {
      c.loading = false;
      if (r.type === 'history') {
        if (c.kind === 'pm') prepend(c, (r.messages || []).map((p) => Object.assign({}, p, { seq: null })));
        else prepend(c, (r.messages || []).filter((m) => m.type === 'message'));
        c.more = !!r.more;
      } else {
        c.more = false;
        if (!(c.kind === 'pm' && r.code === 'unavailable')) note(c, errorText(r), 'error');
      }
      updateOlder();
    });
  }

  function onWelcome(w) {
    st.name = clean(w.name);
    st.server = w.server || {};
    st.pace = new Bucket(st.server.rate_per_sec, st.server.rate_burst);
    st.typingPace = new Bucket(st.server.typing_rate_per_sec, st.server.typing_burst);
    const first = !st.welcomed && !st.everWelcomed;
    st.welcomed = true;
    st.everWelcomed = true;
    st.attempt = 0;
    st.altTries = 0;
    st.restarting = false;
    setStatus(`Connected as ${st.name}`);
    // Under another name because ours was taken (our own dropped connection): ask for it back.
    clearInterval(st.reclaim); if (st.asked && st.name !== st.asked) st.reclaim = setInterval(reclaim, 5000);
    $('me-name').textContent = st.name;
    localStorage.setItem('chatd.name', st.wanted);
    const home = applyView(w);
    st.home = home.name;
    if (first) {
      $('login').hidden = true;
      $('chat').hidden = false;
      select(home.key);
      $('message').focus();
      if ('Notification' in window && Notification.permission === 'default') $('notify').hidden = false;
    } else {
      note(currentConv() || home, `Reconnected as ${st.name}.`);
    }
    // Rejoin the other rooms from where we were (before anything queued meanwhile).
    const rejoin = [...st.convs.values()].filter((c) => c.kind === 'room' && c.key !== home.key);
    const queued = st.outbox.splice(0);
    for (const c of rejoin) {
      const j = { type: 'join', room: c.name };
      if (c.epoch !== null) { j.since = c.lastSeq; j.epoch = c.epoch; }
      send(j, (r) => { if (r.type === 'room') applyView(r); else note(c, errorText(r), 'error'); });
    }
    // The account's rooms, kept by the server (joined on another device, or before a reload):
    // joined here too, with the server's unread counts.
    keptConversations(w, (name) => conv(pmKey(name), 'pm', name));
    for (const name of keptRooms(w, (key, name) => conv(key, 'room', name), home.key)) {
      send({ type: 'join', room: name }, (r) => { if (r.type === 'room') applyView(r); });
    }
    renderRooms(); updateTitle();
    st.outbox.push(...queued);
    send({ type: 'rooms' }, (r) => {
      if (r.type !== 'rooms') return;
      st.knownRooms = (r.rooms || []).map((x) => clean(x.name)).slice(0, 500);
      const dl = $('room-list') || document.body.appendChild(h('datalist', { id: 'room-list' }));
      dl.replaceChildren(...st.knownRooms.map((n) => h('option', { value: n })));
      $('join-room').setAttribute('list', 'room-list');
    });
    pump();
  }

  function onEvent(m) {
    switch (m.type) {
      case 'message': {
        const c = st.convs.get(roomKey(m.room));
        if (c) showMessage(c, m, { inOrder: c.catching });
        break;
      }
      case 'edited': case 'deleted': case 'reaction':
        changes.event(st.convs.get(m.room ? roomKey(m.room) : pmKey(clean(m.with || ''))), m);
        break;
      case 'pm': {
        const other = clean(m.from) === st.name ? clean(m.to) : clean(m.from);
        const c = conv(pmKey(other), 'pm', other);
        if (clean(m.from) !== st.name) c.lastPm = Math.max(c.lastPm || 0, m.id || 0);
        // One that waited for us is counted in the welcome's conversations already.
        showMessage(c, Object.assign({}, m, { seq: null }), { live: !(m.id <= (c.counted || 0)) });
        break;
      }
      case 'room_changed': rooms.changed(m); break;
      case 'joined': case 'left': case 'kicked': {
        const c = st.convs.get(roomKey(m.room));
        if (!c) break;
        const name = clean(m.name);
        if (m.type === 'kicked' && name === st.name) {
          // Banned from the room: out of it here too.
          noteHere(`You were removed from #${c.name} by ${clean(m.by)}${m.reason ? `: ${clean(m.reason)}` : ''}.`, 'error');
          dropConv(c);
          break;
        }
        if (m.type === 'joined') { c.members.set(name, m.role); c.userCount += 1; note(c, `${name} joined`); }
        else {
          c.members.delete(name); c.userCount = Math.max(0, c.userCount - 1); c.typing.delete(name);
          note(c, m.type === 'left' ? `${name} left` : `${name} was kicked by ${clean(m.by)}${m.reason ? `: ${clean(m.reason)}` : ''}`);
        }
        if (st.current === c.key) { renderMembers(); renderTyping(); }
        break;
      }
      case 'presence': {
        // A large room's joins and leaves since the last batch: leaves first, then joins.
        const c = st.convs.get(roomKey(m.room));
        if (!c) break;
        const left = (m.left || []).map(clean); const joined = (m.joined || []).map((u) => [clean(u.name), u.role]);
        for (const name of left) { c.members.delete(name); c.typing.delete(name); }
        for (const [name, role] of joined) if (c.members.size < MEMBERS_SHOWN) c.members.set(name, role);
        c.userCount = m.user_count;
        const list = (names, verb) => names.length > 8 ? `${names.slice(0, 8).join(', ')} and ${names.length - 8} others ${verb}` : `${names.join(', ')} ${verb}`;
        const parts = [];
        if (joined.length) parts.push(list(joined.map(([n]) => n), 'joined'));
        if (left.length) parts.push(list(left, 'left'));
        if (m.unlisted) parts.push(`${m.unlisted} more came and went`);
        note(c, `${parts.join('; ')} (${m.user_count} here)`);
        if (st.current === c.key) { renderMembers(); renderTyping(); }
        break;
      }
      case 'renamed': {
        const from = clean(m.from); const to = clean(m.to);
        for (const c of st.convs.values()) {
          if (c.kind === 'room' && c.members.has(from)) {
            const role = c.members.get(from); c.members.delete(from); c.members.set(to, role);
            note(c, `${from} is now known as ${to}`);
          }
        }
        const pm = st.convs.get(pmKey(from));
        if (pm && pmKey(from) !== pmKey(to)) { st.convs.delete(pm.key); pm.key = pmKey(to); pm.name = to; st.convs.set(pm.key, pm); if (st.current === pmKey(from)) st.current = pm.key; }
        else if (pm) pm.name = to;
        renderRooms(); renderMembers();
        break;
      }
      case 'typing': {
        const from = clean(m.from);
        const c = m.room ? st.convs.get(roomKey(m.room)) : st.convs.get(pmKey(from));
        if (!c) break;
        if (m.state === 'done') c.typing.delete(from);
        else c.typing.set(from, { state: m.state, until: Date.now() + (m.state === 'active' ? 6000 : 30000) });
        if (st.current === c.key) renderTyping();
        break;
      }
      case 'notice': {
        const text = `${clean(m.from) === 'server' ? 'Server' : clean(m.from)}: ${clean(m.text)}`;
        for (const c of st.convs.values()) if (c.kind === 'room') note(c, text, 'system error');
        if (!st.convs.size) noteHere(text);
        break;
      }
      case 'resync': {
        // The server lost messages in this room (a cluster's Redis restarted or dropped them):
        // number afresh and show the recent history after saying so.
        const c = st.convs.get(roomKey(m.room));
        if (!c) break;
        c.seqs.clear(); c.lastSeq = 0; c.epoch = m.epoch; c.catching = false;
        note(c, 'Some messages may have been lost here; reloading recent history.', 'system error');
        send({ type: 'history', room: c.name, limit: 50 }, (r) => {
          if (r.type !== 'history') return;
          for (const x of r.messages || []) showMessage(c, x, { live: false, inOrder: true });
        });
        break;
      }
      case 'read': case 'membership': {
        // Another device of this account read a room, or joined or left one: the same here.
        const name = clean(m.room); const c = st.convs.get(m.with ? pmKey(clean(m.with)) : roomKey(name));
        if (m.type === 'read') syncRead(c, m);
        else if (m.state === 'joined' && !c) send({ type: 'join', room: name }, (r) => { if (r.type === 'room') applyView(r); });
        else if (m.state === 'left' && c) leave(c);
        break;
      }
      case 'error': noteHere(errorText(m), 'error'); break;
      default: break;
    }
  }

  function onFrame(data) {
    let m;
    try { m = JSON.parse(data); } catch (_) { return; }
    if (!m || typeof m !== 'object') return;
    const reply = m.ref !== undefined ? st.replies.get(m.ref) : undefined;
    if (reply) { st.replies.delete(m.ref); reply(m); return; }
    onEvent(m);
  }

  // ---- the connection ----------------------------------------------------------------------
  function reclaim() {
    if (st.welcomed) send({ type: 'nick', name: st.asked }, (r) => {
      if (r.type !== 'ack' || !r.name) return;
      clearInterval(st.reclaim); st.name = clean(r.name); st.wanted = st.asked;
      setStatus(`Connected as ${st.name}`); $('me-name').textContent = st.name;
      noteHere(`${st.name} is free again: you are ${st.name}.`);
    }); }
  function setStatus(text, offline = false) {
    const s = $('status');
    s.textContent = text;
    s.classList.toggle('offline', offline);
  }
  function connect() {
    clearTimeout(st.retry);
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
    let ws;
    try { ws = new WebSocket(url); } catch (e) { return scheduleRetry(`cannot connect: ${e.message}`); }
    st.ws = ws;
    setStatus('Connecting…');
    ws.addEventListener('open', () => hello());
    ws.addEventListener('message', (ev) => { if (st.ws === ws) onFrame(ev.data); });
    ws.addEventListener('close', (ev) => { if (st.ws === ws) onClose(ev); });
  }
  function hello() {
    const home = st.convs.get(roomKey(st.home));
    const msg = { type: 'hello', name: st.wanted, room: st.home, device: st.device };
    if (st.token) msg.token = st.token;
    else if (st.password) msg.password = st.password;
    if (st.register && st.password) {
      // Registered once; reconnects sign in to the account it made.
      msg.type = 'register';
      if (st.invite) msg.invite = st.invite;
    } else if (home && home.epoch !== null) { msg.since = home.lastSeq; msg.epoch = home.epoch; }
    // Hello goes first, ahead of anything queued while offline.
    const id = `w${st.nextId++}`;
    msg.id = id;
    st.replies.set(id, (r) => {
      if (r.type === 'welcome') { st.register = false; return onWelcome(r); }
      if (r.code === 'name_taken' && st.everWelcomed && (st.token || st.password)) {
        // Our own name, still held by the connection that dropped: the server lets it go once it
        // notices. Ask again on this connection (backing off) rather than take another name.
        const delay = Math.round(Math.random() * Math.min(3000, 500 * 2 ** st.attempt));
        st.attempt += 1;
        setStatus(`Your previous connection is still open on the server; trying again in ${(delay / 1000).toFixed(1)} s…`, true);
        const ws = st.ws;
        st.retry = setTimeout(() => { if (st.ws === ws) hello(); }, delay);
        return;
      }
      if (r.code === 'name_taken' && st.everWelcomed && st.altTries < 3) {
        // Probably our own stale session: carry on under an alternative name, as chatctl does.
        st.altTries += 1;
        st.wanted = `${st.wanted}_`;
        noteHere(`The name was taken; trying ${st.wanted}.`);
        return hello();
      }
      const wrong = r.code === 'unauthorized' && st.password && !st.token;
      failLogin(wrong ? `Wrong name or password. (${clean(r.message)})` : errorText(r), r.code);
    });
    st.outbox.unshift(msg);
    pump();
  }
  function failLogin(text, code) {
    if (st.everWelcomed) { noteHere(text, 'error'); return; }
    st.stopped = true;
    if (st.ws) st.ws.close(1000);
    $('login-error').textContent = text;
    if (code === 'unauthorized' && !st.password) $('login-more').open = true;
    $('login-go').disabled = false;
    $('login-name').focus();
  }
  function onClose(ev) {
    const was = st.welcomed;
    st.welcomed = false;
    st.ws = null;
    clearTimeout(st.pumpTimer); st.pumpTimer = null;
    // Requests that were in flight will not be answered.
    for (const [id, reply] of st.replies) {
      reply({ type: 'error', code: 'unavailable', message: 'the connection was lost', ref: id });
    }
    st.replies.clear();
    st.outbox = st.outbox.filter((m) => m.type === 'say' || m.type === 'pm' || m.type === 'join');
    for (const c of st.convs.values()) c.typing.clear();
    renderTyping();
    if (st.stopped) return;
    const reason = clean(ev.reason) || (ev.code === 1006 ? 'connection lost' : `closed (${ev.code})`);
    if (ev.code === 1001) st.restarting = true;
    if (ev.code === 1008) {
      // Policy: kicked, refused token, too slow. Reconnecting would repeat it.
      st.stopped = true;
      setStatus(`Disconnected: ${reason}`, true);
      if (st.everWelcomed) noteHere(`Disconnected by the server: ${reason}. Reload the page to reconnect.`, 'error');
      else failLogin(`The server refused: ${reason}`, reason.includes('unauthorized') ? 'unauthorized' : '');
      return;
    }
    if (!st.everWelcomed && !was && st.attempt > 2) { failLogin(`Cannot reach the chat server (${reason}).`); return; }
    scheduleRetry(reason);
  }
  function scheduleRetry(reason) {
    // Exponential back-off with full jitter: 0.5 s doubling to 20 s, or to 5 s while the server
    // restarts (it said it was going away: it is likely back soon, and the jitter spreads us out).
    const cap = Math.min(st.restarting ? 5000 : 20000, 500 * 2 ** st.attempt);
    const delay = Math.round(Math.random() * cap);
    st.attempt += 1;
    setStatus(`Offline (${reason}); reconnecting in ${(delay / 1000).toFixed(1)} s…`, true);
    st.retry = setTimeout(connect, delay);
  }
  window.addEventListener('online', () => { if (!st.ws && !st.stopped && st.everWelcomed) connect(); });

  // ---- user actions ------------------------------------------------------------------------
  function say(c, text, action) {
    const max = (st.server && st.server.max_message_bytes) || 65536;
    if (utf8.encode(text).length > max - 200) { note(c, `That message is too long (the server takes up to ${max} bytes).`, 'error'); return; }
    const pending = { ts: new Date().toISOString(), from: st.name, text, action, role: 'user', reply_to: c.kind === 'room' ? changes.replying(c) : null };
    const { li, d } = messageNode(pending, c);
    li.classList.add('pending', 'own');
    append(c, li, d);
    const msg = c.kind === 'room' ? { type: 'say', room: c.name, text, ...changes.replyFields(c) } : { type: 'pm', to: c.name, text };
    if (action) msg.action = true;
    send(msg, (r) => {
      li.classList.remove('pending');
      if (r.type === 'ack') {
        const t = when(r.ts);
        li.querySelector('time').replaceWith(t.el);
        if (r.seq) { li.dataset.seq = r.seq; c.seqs.add(r.seq); if (!c.catching) c.lastSeq = Math.max(c.lastSeq, r.seq); }
        if (r.id) { li.dataset.id = r.id; c.ids.add(r.id); changes.sent(li, c); }
      } else {
        li.classList.add('failed');
        li.append(h('span', { class: 'why', text: ` — not sent: ${errorText(r)}` }));
      }
    });
  }
  function joinRoom(name) {
    const room = name.replace(/^#/, '').trim().toLowerCase();
    if (!room) return;
    const key = roomKey(room);
    if (st.convs.has(key) && st.convs.get(key).epoch !== null) { select(key); return; }
    send({ type: 'join', room }, (r) => {
      if (r.type === 'room') { const c = applyView(r); select(c.key); $('message').focus(); } else noteHere(errorText(r), 'error');
    });
  }
  function leave(c) {
    if (c.kind === 'pm') { dropConv(c); return; }
    send({ type: 'leave', room: c.name }, (r) => {
      if (r.type === 'ack') dropConv(c); else note(c, errorText(r), 'error');
    });
  }
  function dropConv(c) {
    st.convs.delete(c.key);
    if (st.current === c.key) {
      const next = st.convs.get(roomKey(st.home)) || st.convs.values().next().value;
      st.current = null;
      if (next) select(next.key); else { list.replaceChildren(); renderRooms(); renderMembers(); }
    } else renderRooms();
  }
  function openPm(name) {
    const c = conv(pmKey(name), 'pm', name);
    select(c.key);
    $('message').focus();
  }
  function search(query) {
    const q = query.trim();
    if (!q) return;
    const panel = $('results'); const out = $('results-list');
    panel.hidden = false;
    out.replaceChildren(h('li', { class: 'system', text: 'Searching…' }));
    send({ type: 'search', query: q, limit: 50 }, (r) => {
      out.replaceChildren();
      if (r.type !== 'search') { out.append(h('li', { class: 'error', text: errorText(r) })); return; }
      $('results-title').textContent = `Search results for “${clean(q)}”`;
      if (!(r.messages || []).length) out.append(h('li', { class: 'system', text: 'Nothing found.' }));
      for (const m of r.messages || []) {
        const go = () => { const k = roomKey(m.room); if (st.convs.has(k)) { select(k); panel.hidden = true; } };
        out.append(h('li', { tabindex: '0', onclick: go, onkeydown: (e) => { if (e.key === 'Enter') go(); } },
          when(m.ts).el, h('span', { class: 'where', text: `#${clean(m.room)}` }), h('span', { class: 'from', text: clean(m.from) }),
          h('bdi', { class: 'text' }, linkify(clean(m.text)))));
      }
    });
  }
  const HELP = '/me action · /join room · /leave · /msg name text · /nick name · /search words · /topic text · /invite, /ban, /mute, /op name · /private · /help';
  function command(c, line) {
    const [cmd, ...rest] = line.slice(1).split(' ');
    const arg = rest.join(' ').trim();
    switch (cmd.toLowerCase()) {
      case 'me': if (arg) say(c, arg, true); return;
      case 'join': return joinRoom(arg);
      case 'leave': case 'part': return leave(c);
      case 'msg': case 'pm': case 'query': {
        const [to, ...words] = arg.split(' ');
        if (!to) return note(c, 'Usage: /msg name text', 'error');
        const p = conv(pmKey(to), 'pm', to);
        if (words.length) say(p, words.join(' '), false);
        return select(p.key);
      }
      case 'nick':
        return send({ type: 'nick', name: arg }, (r) => {
          if (r.type === 'ack') { st.name = clean(r.name); st.wanted = st.name; $('me-name').textContent = st.name; note(c, `You are now ${st.name}.`); renderMembers(); }
          else note(c, errorText(r), 'error');
        });
      case 'search': return search(arg);
      case 'help': return note(c, HELP);
      case 'topic': case 'invite': case 'ban': case 'unban': case 'mute': case 'unmute':
      case 'op': case 'deop': case 'private': case 'public':
        if (rooms.command(c, cmd.toLowerCase(), arg)) return undefined;
        return note(c, `/${cmd} works in a room.`, 'error');
      default: return note(c, `Unknown command /${cmd}. ${HELP}`, 'error');
    }
  }

  // Typing: `active` at most every 3 s while typing, `paused` after 5 s idle, `done` when cleared.
  function stopTyping() {
    clearTimeout(st.typing.idle);
    const c = st.convs.get(st.typing.key);
    if (c && st.typing.state !== 'done') sendTyping(targetOf(c), 'done');
    st.typing.state = 'done';
  }
  $('message').addEventListener('input', () => {
    const c = currentConv();
    const box = $('message');
    box.style.height = 'auto';
    box.style.height = `${Math.min(box.scrollHeight, 200)}px`;
    if (!c) return;
    const text = box.value;
    if (!text || text.startsWith('/')) { stopTyping(); return; }
    const now = Date.now();
    if (st.typing.key !== c.key || st.typing.state !== 'active' || now - st.typing.at > 3000) {
      st.typing.key = c.key; st.typing.state = 'active'; st.typing.at = now;
      sendTyping(targetOf(c), 'active');
    }
    clearTimeout(st.typing.idle);
    st.typing.idle = setTimeout(() => {
      if (st.typing.state === 'active') { st.typing.state = 'paused'; sendTyping(targetOf(c), 'paused'); }
    }, 5000);
  });
  $('message').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); $('composer').requestSubmit(); }
    if (e.key === 'ArrowUp' && !$('message').value && changes.editLast()) e.preventDefault();
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const c = currentConv();
    const box = $('message');
    const text = box.value.replace(/\s+$/, '');
    if (!c || !text.trim()) return;
    box.value = '';
    box.style.height = 'auto';
    if (st.typing.state !== 'done') { clearTimeout(st.typing.idle); st.typing.state = 'done'; }
    if (changes.submit(c, text)) return;
    if (text.startsWith('/') && !text.startsWith('//')) command(c, text);
    else say(c, text.startsWith('//') ? text.slice(1) : text, false);
  });
  $('join-form').addEventListener('submit', (e) => { e.preventDefault(); joinRoom($('join-room').value); $('join-room').value = ''; closePanes(); });
  $('leave').addEventListener('click', () => { const c = currentConv(); if (c) leave(c); });
  $('search-form').addEventListener('submit', (e) => { e.preventDefault(); search($('search-input').value); });
  $('results-close').addEventListener('click', () => { $('results').hidden = true; $('search-input').focus(); });
  scroller.addEventListener('scroll', () => {
    const c = currentConv();
    if (c && scroller.scrollTop < 60) loadOlder(c);
    if (c) markRead(c);
  });

  function closePanes() {
    for (const [pane, btn] of [['rooms-pane', 'toggle-rooms'], ['members-pane', 'toggle-members']]) {
      $(pane).classList.remove('open'); $(btn).setAttribute('aria-expanded', 'false');
    }
  }
  for (const [pane, btn] of [['rooms-pane', 'toggle-rooms'], ['members-pane', 'toggle-members']]) {
    $(btn).addEventListener('click', () => {
      const open = !$(pane).classList.contains('open');
      closePanes();
      $(pane).classList.toggle('open', open);
      $(btn).setAttribute('aria-expanded', String(open));
      if (open) { const f = $(pane).querySelector('button, input'); if (f) f.focus(); }
    });
  }
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') { closePanes(); if (!$('results').hidden) { $('results').hidden = true; $('message').focus(); } }
  });

  // ---- sign in (signin.js) -----------------------------------------------------------------
  chatdSignIn({ st, connect });
})();
