// chatd's browser client, part 2 of 6 (web/mod.rs joins them into the page's one script): what
// is unread. Counts and mentions per conversation, the title and notifications; and with
// accounts, the read markers the server keeps: the welcome's counts, and `read` sent for a room
// once it has been seen.
const chatdUnread = ({ st, send, nearBottom, currentConv, renderRooms }) => {
  const { clean } = chatdKit;

  /** A live message arrived in `c`: counted while it is not in view; a notification if asked. */
  function notice(c, m, mention) {
    const away = document.hidden || st.current !== c.key;
    if (away) {
      c.unread += 1;
      c.mention = c.mention || mention || c.kind === 'pm';
      renderRooms();
      updateTitle();
    }
    if ((mention || c.kind === 'pm') && document.hidden && 'Notification' in window
      && Notification.permission === 'granted') {
      const where = c.kind === 'room' ? ` in #${c.name}` : '';
      try { new Notification(`${clean(m.from)}${where}`, { body: clean(m.text), tag: c.key }); } catch (_) { /* not allowed here */ }
    }
  }

  /**
   * Tells the server (accounts mode) how far a room has been read: when it is on screen,
   * scrolled to the end and the page visible; at most once a second per room.
   */
  function markRead(c) {
    if (!st.keepsRead || !st.welcomed) return;
    if (document.hidden || st.current !== c.key || !nearBottom()) return;
    // A room by seq; a conversation by the id of the last message from the other.
    const upTo = () => (c.kind === 'room' ? c.lastSeq : (c.lastPm || 0));
    if (upTo() <= (c.readSent || 0) || c.readTimer) return;
    c.readTimer = setTimeout(() => {
      c.readTimer = null;
      const at = upTo();
      if (at <= (c.readSent || 0) || !st.welcomed) return;
      c.readSent = at;
      send(c.kind === 'room' ? { type: 'read', room: c.name, seq: at } : { type: 'read', with: c.name, msg: at }, () => {});
    }, c.readSent ? 1000 : 0);
  }

  /** Another device of the account read `c` (a `read` event): the same counts here. */
  function syncRead(c, m) {
    if (!c) return;
    c.readSent = Math.max(c.readSent || 0, m.read || 0);
    if (st.current !== c.key || document.hidden) {
      c.unread = Math.min(m.unread || 0, 999);
      c.mention = (m.mentions || 0) > 0;
    }
    renderRooms();
    updateTitle();
  }

  function updateTitle() {
    let unread = 0;
    for (const c of st.convs.values()) unread += c.unread;
    const here = currentConv();
    const base = here ? `${here.kind === 'room' ? '#' : '@'}${here.name} · chatd` : 'chatd';
    document.title = unread ? `(${unread}) ${base}` : base;
  }

  /**
   * The welcome's rooms (accounts mode), kept by the server with what is unread in each: their
   * conversations (made by `room(key, name)`) take the server's counts; returns the names of
   * those not here yet, to join (not `homeKey`, the hello's).
   */
  function keptRooms(w, room, homeKey) {
    st.keepsRead = Array.isArray(w.rooms) && w.rooms.length > 0;
    const join = [];
    for (const m of (w.rooms || []).slice(0, 100)) {
      const name = clean(m.room);
      if (!name) continue;
      const key = `room:${name}`;
      const known = st.convs.has(key);
      const c = room(key, name);
      c.readSent = Math.max(c.readSent || 0, m.read || 0);
      if (key !== st.current && !known) {
        c.unread = Math.min(m.unread || 0, 999);
        c.mention = (m.mentions || 0) > 0;
      }
      if (key !== homeKey && !known) join.push(name);
    }
    renderRooms();
    updateTitle();
    return join;
  }

  /**
   * The welcome's conversations (the PMs the server keeps): made with `pm(name)`, with the
   * server's counts; the PMs that waited, sent after the welcome, are counted by them already.
   */
  function keptConversations(w, pm) {
    for (const x of (w.conversations || []).slice(0, 50)) {
      const name = clean(x.with);
      if (!name) continue;
      const known = st.convs.has(`pm:${name.toLowerCase()}`);
      const c = pm(name);
      c.readSent = Math.max(c.readSent || 0, x.read || 0);
      c.counted = Math.max(c.counted || 0, x.last || 0);
      if (!known && st.current !== c.key) {
        c.unread = Math.min(x.unread || 0, 999);
        c.mention = c.unread > 0;
      }
    }
  }

  return { notice, markRead, syncRead, updateTitle, keptRooms, keptConversations };
};
