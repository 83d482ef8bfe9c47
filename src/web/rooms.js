// chatd's browser client, part 3 of 6 (web/mod.rs joins them into the page's one script): rooms
// that belong to someone. A room's topic and settings (a mark on a private one), each member's
// standing there, and a menu on a member's name with what the viewer may do to them.
const chatdRooms = ({ st, send, note, errorText, renderRooms, renderMembers }) => {
  const { clean, h } = chatdKit;
  const MARKS = { owner: 'owner', op: 'op', voice: 'voice' };
  const RANK = { member: 0, voice: 1, op: 2, owner: 3 };

  /** A room view's settings and standings (`welcome`, `room`), kept on its conversation. */
  function apply(c, v) {
    c.roles = new Map();
    for (const u of v.users || []) if (u.room_role) c.roles.set(clean(u.name).toLowerCase(), clean(u.room_role));
    settle(c, v);
  }
  /** A room's settings (a view's, or a `room_changed` event's). */
  function settle(c, s) {
    c.topic = clean(s.topic || '');
    c.private = s.visibility === 'private';
    c.inviteOnly = !!s.invite_only;
    c.moderated = !!s.moderated;
    c.roles = c.roles || new Map();
    if (s.owner) c.roles.set(clean(s.owner).toLowerCase(), 'owner');
  }

  const roleOf = (c, name) => (c.roles && c.roles.get(name.toLowerCase())) || 'member';
  const admin = () => [...st.convs.values()].some((c) => c.members && c.members.get(st.name) === 'admin');

  /** "#dev" with a lock when private, for the room list. */
  function label(c) {
    if (c.kind !== 'room') return h('span', { text: `@${c.name}` });
    return h('span', {}, `#${c.name} `, c.private ? h('span', { class: 'role lock', title: 'Private room: listed for its members only', text: 'private' }) : null);
  }

  /** The room bar's line: topic and settings. */
  function topicLine(c) {
    if (!c || c.kind !== 'room') return '';
    const flags = [c.private && 'private', c.inviteOnly && 'invite-only', c.moderated && 'moderated'].filter(Boolean);
    return [c.topic, flags.length ? `(${flags.join(', ')})` : ''].filter(Boolean).join(' ');
  }

  /** A `room_changed` event. */
  function changed(m) {
    const c = st.convs.get(`room:${clean(m.room)}`);
    if (!c) return;
    if (m.settings) {
      const topic = c.topic;
      settle(c, m.settings);
      note(c, c.topic !== topic && c.topic ? `The topic is now: ${c.topic}` : `The room's settings changed: ${topicLine(c) || 'public, no topic'}`);
    }
    if (m.name && m.room_role) {
      const who = clean(m.name);
      if (m.room_role === 'member') c.roles.delete(who.toLowerCase()); else c.roles.set(who.toLowerCase(), clean(m.room_role));
      note(c, m.room_role === 'member' ? `${who} is a member again` : `${who} is now ${clean(m.room_role)} of #${c.name}`);
    }
    renderRooms();
    if (st.current === c.key) { renderMembers(); document.getElementById('room-topic').textContent = topicLine(c); }
  }

  /** The standing mark beside a member's name. */
  function mark(c, name) {
    const role = c.kind === 'room' ? roleOf(c, name) : 'member';
    return MARKS[role] ? h('span', { class: `role ${role}`, text: MARKS[role] }) : null;
  }

  /** Sends a moderation request about `name` in `c`; says what came of it in the room. */
  function act(c, request, done) {
    send(Object.assign({ room: c.name }, request), (r) => {
      if (r.type === 'ack') note(c, done); else note(c, errorText(r), 'error');
    });
  }

  /** The menu beside `name` in room `c`: what the viewer may do to them (none: no menu). */
  function menu(c, name) {
    if (c.kind !== 'room' || name === st.name) return null;
    const mine = admin() ? 4 : RANK[roleOf(c, st.name)];
    const theirs = RANK[roleOf(c, name)];
    if (mine < RANK.op || theirs >= mine) return null;
    const items = [];
    const item = (text, request, done) => items.push(h('li', {}, h('button', {
      type: 'button', class: 'plain',
      onclick: (e) => { e.target.closest('details').open = false; act(c, request, done); },
    }, text)));
    const role = roleOf(c, name);
    if (mine >= RANK.owner) {
      if (role === 'op') item('Remove op', { type: 'role', name, role: 'member' }, `${name} is no longer an op`);
      else item('Make op', { type: 'role', name, role: 'op' }, `${name} is now an op`);
    }
    if (role === 'voice') item('Remove voice', { type: 'role', name, role: 'member' }, `${name} has no voice now`);
    else if (role === 'member') item('Give voice', { type: 'role', name, role: 'voice' }, `${name} may speak when the room is moderated`);
    item('Mute for 10 minutes', { type: 'mute', name, duration: '10m' }, `${name} is muted for 10 minutes`);
    item('Unmute', { type: 'unmute', name }, `${name} may speak again`);
    item('Ban for a day', { type: 'ban', name, duration: '1d' }, `${name} is banned for a day`);
    item('Ban', { type: 'ban', name }, `${name} is banned`);
    return h('details', { class: 'member-menu' },
      h('summary', { title: `Moderate ${name}`, 'aria-label': `Moderate ${name}`, text: '⋯' }),
      h('ul', { role: 'menu' }, ...items));
  }

  /** `/topic`, `/invite`, `/ban`, `/unban`, `/mute`, `/unmute`, `/op`, `/deop`, `/private`,
   *  `/public`: true if `cmd` was one. */
  function command(c, cmd, arg) {
    if (!c || c.kind !== 'room') return false;
    const [name, ...rest] = arg.split(' ');
    const reason = rest.join(' ').trim() || undefined;
    switch (cmd) {
      case 'topic': act(c, { type: 'room_set', topic: arg }, 'Topic set.'); return true;
      case 'private': act(c, { type: 'room_set', visibility: 'private', invite_only: true }, `#${c.name} is private and invite-only now.`); return true;
      case 'public': act(c, { type: 'room_set', visibility: 'public', invite_only: false }, `#${c.name} is public now.`); return true;
      case 'invite': act(c, { type: 'invite', name }, `${name} may join #${c.name} now.`); return true;
      case 'ban': act(c, { type: 'ban', name, reason }, `${name} is banned.`); return true;
      case 'unban': act(c, { type: 'unban', name }, `${name} is no longer banned.`); return true;
      case 'mute': act(c, { type: 'mute', name, reason }, `${name} is muted.`); return true;
      case 'unmute': act(c, { type: 'unmute', name }, `${name} may speak again.`); return true;
      case 'op': act(c, { type: 'role', name, role: 'op' }, `${name} is now an op.`); return true;
      case 'deop': act(c, { type: 'role', name, role: 'member' }, `${name} is no longer an op.`); return true;
      default: return false;
    }
  }

  return { apply, label, topicLine, changed, mark, menu, command };
};
