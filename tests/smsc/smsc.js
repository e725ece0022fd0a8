// The SMSC the SMPP tests run against: node-smpp (npm `smpp`), an SMPP 3.4 implementation
// written by others, with a little behaviour of a real SMSC around it.
//
//   node smsc.js <smpp port> <control port>        SMSC_PASSWORD=... refuses other passwords
//
// SMPP side: binds of the three kinds, enquire_link answered, submit_sm answered with an id
// (msg-N) and recorded, a delivery receipt when registered_delivery asks for one. Every
// deliver_sm / data_sm this SMSC sends is delivered again (same bytes, new sequence number)
// while the ESME answers it with an error or not at all, up to `max_attempts`.
//
// Control side, one JSON object per line, one JSON answer (at once, so a test blocked on
// it never keeps its ESME from answering): see `control` below.
'use strict';
const smpp = require('smpp');
const net = require('net');
const PDU = require('smpp/lib/pdu').PDU;

const PORT = +(process.argv[2] || 2775), CTRL = +(process.argv[3] || 2776);
const PASSWORD = process.env.SMSC_PASSWORD;

// node-smpp decodes short_message as it parses; the tests want the bytes as sent, so the
// parser keeps the raw PDU beside what it decoded
const fromBuffer = PDU.prototype.fromBuffer;
PDU.prototype.fromBuffer = function (buffer) {
  Object.defineProperty(this, 'raw', { value: Buffer.from(buffer), enumerable: false });
  return fromBuffer.call(this, buffer);
};

const settings = {
  echo: false,            // each submit_sm comes back as a deliver_sm (same body) to the receiving sessions
  answer_pings: true,     // false: enquire_link goes unanswered
  throttle: 0,            // > 0: at most this many submit_sm per second, the rest ESME_RTHROTTLED
  nack_submits: 0,        // the next N submit_sm are answered with generic_nack (ESME_RSYSERR)
  submit_delay: 0,        // ms before each submit_sm_resp
  redeliver_after: 1000,  // ms without a good deliver_sm_resp before the PDU is delivered again
  max_attempts: 5,
};
const sessions = new Set();
let n = 0, epoch = 0, submits = [], deliveries = [], pings = 0, unbinds = 0, unbind_resps = 0, throttled = 0, window = [];

function bound(kinds) { return [...sessions].filter((s) => kinds.includes(s.bound)); }
const RECEIVING = ['bind_receiver', 'bind_transceiver'];

// --- delivering to the ESME, again until it says yes ---------------------------------------

function deliver(session, raw, what) {
  const record = { what, attempts: 0, statuses: [], done: false }, mine = epoch;
  deliveries.push(record);
  const attempt = () => {
    if (record.done || mine !== epoch) return;  // delivered, or the SMSC was reset since
    if (!sessions.has(session)) {  // its session is gone: the next receiving session gets it, as a real SMSC does
      const next = bound(RECEIVING)[0];
      if (!next) { setTimeout(attempt, settings.redeliver_after); return; }
      session = next;
    }
    if (record.attempts >= settings.max_attempts) { record.done = true; record.gave_up = true; return; }
    record.attempts++;
    const buffer = Buffer.from(raw);
    if (session.sequence === 0x7FFFFFFF) session.sequence = 0;
    const sequence = ++session.sequence;
    buffer.writeUInt32BE(sequence, 12);
    let answered = false;
    const timer = setTimeout(() => {
      delete session._callbacks[sequence];
      if (!answered) { record.statuses.push('none'); attempt(); }
    }, settings.redeliver_after);
    session._callbacks[sequence] = (resp) => {
      answered = true; clearTimeout(timer);
      record.statuses.push(resp.command_status);
      if (resp.command_status === 0 && resp.command !== 'generic_nack') record.done = true;
      else setTimeout(attempt, 50);
    };
    session.socket.write(buffer);
  };
  attempt();
}

function build(command, fields) { return new PDU(command, fields).toBuffer(); }

function mo(request) {
  const fields = Object.assign({ source_addr: request.from || '', destination_addr: request.to || '' },
                               request.fields || {});
  if (request.hex !== undefined) fields.short_message = Buffer.from(request.hex, 'hex');
  else if (request.text !== undefined) fields.short_message = request.text;
  if (request.payload_hex !== undefined) fields.message_payload = Buffer.from(request.payload_hex, 'hex');
  const command = request.command || 'deliver_sm';
  const raw = build(command, fields);
  const targets = bound(RECEIVING);
  for (const s of targets) deliver(s, raw, request.what || command);
  return { queued: targets.length };
}

// --- the SMPP side ------------------------------------------------------------------------

let second = 0, inSecond = 0;
function throttledNow() {
  if (!settings.throttle) return false;
  const now = Math.floor(Date.now() / 100);   // tenths of a second: throttle/10 per tenth
  if (now !== second) { second = now; inSecond = 0; }
  return ++inSecond > Math.max(1, Math.floor(settings.throttle / 10));
}

function onSubmit(session, pdu) {
  if (!session.bound || session.bound === 'bind_receiver')
    return session.send(pdu.response({ command_status: smpp.ESME_RINVBNDSTS }));
  if (settings.nack_submits > 0) {
    settings.nack_submits--;
    return session.send(new PDU('generic_nack', { sequence_number: pdu.sequence_number,
                                                  command_status: smpp.ESME_RSYSERR }));
  }
  if (throttledNow()) { throttled++; return session.send(pdu.response({ command_status: smpp.ESME_RTHROTTLED })); }
  const id = 'msg-' + (++n);
  const body = pdu.raw.slice(16);
  submits.push({
    id, src: pdu.source_addr, dst: pdu.destination_addr, dcs: pdu.data_coding, esm_class: pdu.esm_class,
    registered_delivery: pdu.registered_delivery, sar: pdu.sar_msg_ref_num === undefined ? null :
      [pdu.sar_msg_ref_num, pdu.sar_total_segments, pdu.sar_segment_seqnum],
    text: pdu.short_message && pdu.short_message.message !== undefined ? String(pdu.short_message.message) : null,
    body_hex: body.toString('hex'),
  });
  const answer = () => {
    session.send(pdu.response({ message_id: id }));
    if (settings.echo) {
      const raw = Buffer.from(pdu.raw);
      raw.writeUInt32BE(0x00000005, 4);  // the same body, as deliver_sm
      for (const s of bound(RECEIVING)) deliver(s, raw, 'echo ' + id);
    }
    if (pdu.registered_delivery & 1) {
      deliver(session.bound === 'bind_transmitter' ? (bound(RECEIVING)[0] || session) : session, build('deliver_sm', {
        source_addr: pdu.destination_addr, destination_addr: pdu.source_addr, esm_class: 0x04,
        short_message: `id:${id} sub:001 dlvrd:001 submit date:2401010000 done date:2401010001 stat:DELIVRD err:000 text:`,
        receipted_message_id: id, message_state: 2 }), 'receipt ' + id);
    }
  };
  if (settings.submit_delay) setTimeout(answer, settings.submit_delay); else answer();
}

const server = smpp.createServer({ debug: false }, (session) => {
  session.bound = null;
  session.on('error', (e) => console.log('session error', e.code || e.message));
  for (const kind of ['bind_transmitter', 'bind_receiver', 'bind_transceiver']) {
    session.on(kind, (pdu) => {
      if (PASSWORD !== undefined && pdu.password !== PASSWORD) {
        session.send(pdu.response({ command_status: smpp.ESME_RINVPASWD }));
        return session.close();
      }
      session.bound = kind; session.system_id = pdu.system_id; session.system_type = pdu.system_type;
      sessions.add(session);
      session.send(pdu.response({ system_id: 'CISMSC' }));
    });
  }
  session.on('enquire_link', (pdu) => { pings++; if (settings.answer_pings) session.send(pdu.response()); });
  session.on('unbind', (pdu) => {
    unbinds++; sessions.delete(session);
    session.send(pdu.response(), () => session.close());  // close once the answer is written
  });
  session.on('unknown', (pdu) => session.send(pdu.response()));  // generic_nack ESME_RINVCMDID
  session.on('close', () => sessions.delete(session));
  session.on('submit_sm', (pdu) => onSubmit(session, pdu));
});
server.listen(PORT, '127.0.0.1');

// --- the control side ---------------------------------------------------------------------

function control(request) {
  switch (request.cmd) {
    case 'stats':  // what happened so far
      return { bound: [...sessions].map((s) => ({ kind: s.bound, system_id: s.system_id, system_type: s.system_type })),
               submits, deliveries, pings, unbinds, unbind_resps, throttled };
    case 'reset':
      epoch++; submits = []; deliveries = []; pings = 0; unbinds = 0; unbind_resps = 0; throttled = 0;
      Object.assign(settings, { echo: false, answer_pings: true, throttle: 0, nack_submits: 0, submit_delay: 0,
                                redeliver_after: 1000, max_attempts: 5 });
      return { ok: true };
    case 'set':  // {"cmd": "set", "echo": true, "throttle": 200, ...}
      for (const key of Object.keys(request)) if (key !== 'cmd') {
        if (!(key in settings)) return { error: 'unknown setting ' + key };
        settings[key] = request[key];
      }
      return { ok: true, settings };
    case 'mo':  // {"cmd": "mo", "from", "to", "text" | "hex", "fields": {...}, "command": "deliver_sm" | "data_sm"}
      return mo(request);
    case 'raw':  // {"cmd": "raw", "hex": "..."}: bytes as they are, to every bound session
      for (const s of sessions) s.socket.write(Buffer.from(request.hex, 'hex'));
      return { sent: sessions.size };
    case 'unbind':  // the SMSC ends the sessions with an unbind
      for (const s of sessions) s.unbind({}, () => { unbind_resps++; });
      return { sent: sessions.size };
    case 'drop':  // the TCP connections are cut, no unbind
      { const count = sessions.size; for (const s of server.sessions) s.socket.destroy(); return { dropped: count }; }
    default:
      return { error: 'usage: {"cmd": "stats" | "reset" | "set" | "mo" | "raw" | "unbind" | "drop", ...}' };
  }
}

net.createServer((sock) => {
  let buffer = '';
  sock.on('data', (data) => {
    buffer += data;
    let i;
    while ((i = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, i); buffer = buffer.slice(i + 1);
      let answer;
      try { answer = control(JSON.parse(line)); } catch (e) { answer = { error: String(e) }; }
      sock.write(JSON.stringify(answer) + '\n');
    }
  });
  sock.on('error', () => {});
}).listen(CTRL, '127.0.0.1', () => console.log(`SMSC listening smpp=127.0.0.1:${PORT} ctrl=127.0.0.1:${CTRL}`));

process.on('SIGTERM', () => process.exit(0));
