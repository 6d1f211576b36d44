#!lua name=qt
--[[
qt's server-side write path (Valkey functions), loaded by qt_cli/core/store/writer.py with
FUNCTION LOAD REPLACE. Bump VERSION whenever this file changes: writers compare it with
`FCALL_RO qt_version 0` and reload the library when it differs or is missing.

qt_append   KEYS: stream, hwm hash            one call appends a whole batch to one stream
  ARGV: maxlen (0 = no trim), approx ('1' = MAXLEN ~), nrequire and as many (session, seq):
        marks that must already be reached, else nothing is written and the call fails with
        'an earlier batch of this stream is not stored' (a writer pipelining two calls passes
        the marks of the first, so the second never lands before a first that failed);
        then the schemas: nschemas, and per schema nnames, then per field its name and source:
          ''        a value sent with each entry (in the order of the fields)
          '=text'   the same text in every entry of the call (sent once: type, symbol)
          '#'       the entry's event ms (timestamp_ms)
          '>name'   a copy of field `name` of the same entry (recv_ns is ts_init)
        then count, sep, data: data holds, per entry, the schema index (1-based; only when
        there are several schemas), the event ms and the sent values, EACH followed by sep (one
        byte that occurs in no value; the writer picks it). One blob instead of ~20 arguments
        per entry: far cheaper to pack for the client and to hand to the function for the
        server; what is the same in every entry or a copy of another field is not sent at all.
  An entry whose `seq` value is at or below hwm[its `session` value] is skipped (already
  stored: exactly once). An entry with an empty or no session is always written. The id is
  `<event ms>-*`; an event older than the stream's top is clamped to `<top ms>-*` and gets the
  field late=1. The high-water marks are updated in the same call, so the stream and its marks
  never disagree.
  Returns {written, duplicates, late, id or '' per entry...}.

qt_chunk    KEYS: history stream, late index (zset), hwm hash of the history stream
  ARGV: t_min ms, src (id of the last per-event entry the chunk includes), nfields, f1, v1, ...
  Idempotent on src: skipped when the last appended chunk's src is at or above this one
  (kept in hwm[src], so it survives trimming of the history stream). A chunk older than the
  history stream's top gets a clamped id and is added to the late index (score = t_min ms).
  Returns {1, id, late} or {0, last src}.
]]

local VERSION = '4'

-- Stream ids are compared as (ms, seq) numbers; the strings are kept for building ids, because
-- Lua would print a millisecond timestamp as 1.754654400123e+12.
local function split_id(id)
  local dash = string.find(id, '-', 1, true)
  if dash == nil then
    return tonumber(id), 0
  end
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function id_ms_text(id)
  local dash = string.find(id, '-', 1, true)
  if dash == nil then
    return id
  end
  return string.sub(id, 1, dash - 1)
end

-- The last id the stream generated: XADD refuses anything at or below it, even when the entry
-- holding it was trimmed away (then the stream looks empty or older than it is).
local function last_generated(key)
  local info = server.pcall('XINFO', 'STREAM', key)
  if type(info) ~= 'table' or info.err then
    return nil
  end
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return info[i + 1]
    end
  end
  return nil
end

-- Top of a stream as (ms number, ms text); (-1, nil) for a missing stream.
local function stream_top(key)
  local last = server.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #last > 0 then
    local text = id_ms_text(last[1][1])
    return tonumber(text), text
  end
  local generated = last_generated(key)
  if generated ~= nil and generated ~= '0-0' then
    local text = id_ms_text(generated)
    return tonumber(text), text
  end
  return -1, nil
end

local function is_id_too_small(err)
  return type(err) == 'table' and err.err ~= nil
    and string.find(err.err, 'equal or smaller', 1, true) ~= nil
end

local function append(keys, args)
  local pcall_, unpack_, tonumber_ = server.pcall, unpack, tonumber
  local stream, hwm_key = keys[1], keys[2]
  local maxlen = tonumber(args[1])
  local approx = args[2] == '1'
  -- Entries of an earlier call that are still in flight must be stored before this one's: a
  -- writer with two calls on the wire passes the marks the first one sets, and when it failed
  -- (it will be retried) this one is refused rather than stored ahead of it.
  local nrequire = tonumber(args[3])
  local i = 4
  for _ = 1, nrequire do
    local have = tonumber(server.call('HGET', hwm_key, args[i])) or 0
    if have < tonumber(args[i + 1]) then
      return server.error_reply('qt_append: an earlier batch of this stream is not stored')
    end
    i = i + 2
  end
  local nschemas = tonumber(args[i])
  i = i + 1
  -- Field names and sources are sent once per call (a schema), the values once per entry.
  -- Each schema keeps a ready XADD command with its names and per-call texts filled in; per
  -- entry only the id and the values are written into it (cheaper than a table per entry).
  local schemas = {}
  for s = 1, nschemas do
    local nnames = tonumber(args[i])
    i = i + 1
    local cmd = {'XADD', stream, ''}
    local schema = {cmd = cmd, n = nnames, sent = {}, ms = {}, copies = {}}
    local at = {}  -- field name -> its place in cmd
    local wanted = {}  -- copies as (place, name of the field copied)
    for j = 1, nnames do
      local name, source = args[i], args[i + 1]
      i = i + 2
      local place = 3 + 2 * j
      cmd[place - 1] = name
      cmd[place] = ''
      at[name] = place
      local kind = string.sub(source, 1, 1)
      if source == '' then
        schema.sent[#schema.sent + 1] = place
      elseif kind == '=' then
        cmd[place] = string.sub(source, 2)
      elseif source == '#' then
        schema.ms[#schema.ms + 1] = place
      elseif kind == '>' then
        wanted[#wanted + 1] = {place, string.sub(source, 2)}
      else
        return server.error_reply('qt_append: unknown source ' .. source .. ' of field ' .. name)
      end
    end
    local copied = {}
    for _, copy in ipairs(wanted) do
      copied[copy[1]] = true
    end
    for _, copy in ipairs(wanted) do
      local from = at[copy[2]]
      if from == nil or copied[from] then
        return server.error_reply('qt_append: field ' .. copy[2] .. ' to copy is missing or a copy')
      end
      schema.copies[#schema.copies + 1] = copy[1]
      schema.copies[#schema.copies + 1] = from
    end
    schema.session, schema.seq = at['session'], at['seq']
    schemas[s] = schema
  end
  local count = tonumber(args[i])
  i = i + 1

  local top, top_text = stream_top(stream)
  local marks = {}       -- session -> highest seq (number), read once per call
  local mark_text = {}   -- session -> that seq as sent (text), for HSET
  local changed = {}
  local changed_list = {}
  local written, duplicates, late = 0, 0, 0
  local out = {0, 0, 0}
  local nout = 3

  local function save_marks()
    if #changed_list > 0 then
      local cmd = {'HSET', hwm_key}
      for _, session in ipairs(changed_list) do
        cmd[#cmd + 1] = session
        cmd[#cmd + 1] = mark_text[session]
      end
      server.call(unpack(cmd))
    end
  end

  local sep = args[i]
  local data = args[i + 1]
  local find, sub = string.find, string.sub
  local pos = 1          -- start of the next value in data
  local e
  if type(sep) ~= 'string' or #sep ~= 1 or type(data) ~= 'string' then
    return server.error_reply('qt_append: expected count, a one-byte separator and the data')
  end

  local indexed = nschemas > 1
  local schema = schemas[1]
  for _ = 1, count do
    if indexed then  -- a missing or unknown index fails just below
      e = find(data, sep, pos, true)
      schema = e and schemas[tonumber_(sub(data, pos, e - 1))]
      if e then
        pos = e + 1
      end
    end
    e = find(data, sep, pos, true)
    if schema == nil or e == nil then
      save_marks()
      return server.error_reply('qt_append: data holds fewer entries than count')
    end
    local ms_text = sub(data, pos, e - 1)
    pos = e + 1
    -- The values go straight into the schema's XADD command.
    local cmd = schema.cmd
    local nnames = schema.n
    local sent = schema.sent
    for t = 1, #sent do
      e = find(data, sep, pos, true)
      if e == nil then
        save_marks()
        return server.error_reply('qt_append: data ends inside an entry')
      end
      cmd[sent[t]] = sub(data, pos, e - 1)
      pos = e + 1
    end
    local at_ms = schema.ms
    for t = 1, #at_ms do
      cmd[at_ms[t]] = ms_text
    end
    local copies = schema.copies
    for t = 1, #copies, 2 do
      cmd[copies[t]] = cmd[copies[t + 1]]
    end
    local session, seq_text, seq = '', nil, nil
    if schema.session ~= nil then
      session = cmd[schema.session]
    end
    local fresh = true
    if session ~= '' and schema.seq ~= nil then
      seq_text = cmd[schema.seq]
      seq = tonumber(seq_text)
      local mark = marks[session]
      if mark == nil then
        mark = tonumber(server.call('HGET', hwm_key, session)) or 0
        marks[session] = mark
      end
      if seq ~= nil and seq <= mark then
        fresh = false
      end
    end
    if not fresh then
      duplicates = duplicates + 1
      nout = nout + 1
      out[nout] = ''
    else
      local ms = tonumber_(ms_text)
      local n = 3 + 2 * nnames
      cmd[3] = ms_text .. '-*'
      local is_late = top_text ~= nil and ms < top
      local id
      if not is_late then
        id = pcall_(unpack_(cmd, 1, n))
        if type(id) == 'table' and is_id_too_small(id) then
          -- The stream's top lies beyond what XREVRANGE showed (trimmed entries): clamp.
          top, top_text = stream_top(stream)
          is_late = true
        end
      end
      if is_late then
        cmd[3] = top_text .. '-*'
        cmd[n + 1] = 'late'
        cmd[n + 2] = '1'
        id = pcall_(unpack_(cmd, 1, n + 2))
        late = late + 1
      else
        top, top_text = ms, ms_text
      end
      if type(id) == 'table' and id.err then
        -- Keep the marks consistent with what was stored before failing the call.
        save_marks()
        return server.error_reply('qt_append: ' .. id.err)
      end
      written = written + 1
      nout = nout + 1
      out[nout] = id
      if seq ~= nil then
        if seq > (marks[session] or 0) then
          marks[session] = seq
          mark_text[session] = seq_text
          if not changed[session] then
            changed[session] = true
            changed_list[#changed_list + 1] = session
          end
        end
      end
    end
  end
  save_marks()
  if written > 0 and maxlen > 0 then
    if approx then
      server.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
    else
      server.call('XTRIM', stream, 'MAXLEN', maxlen)
    end
  end
  out[1], out[2], out[3] = written, duplicates, late
  return out
end

local function id_at_or_above(a, b)
  local a_ms, a_seq = split_id(a)
  local b_ms, b_seq = split_id(b)
  if a_ms ~= b_ms then
    return a_ms > b_ms
  end
  return a_seq >= b_seq
end

local function chunk(keys, args)
  local hist, late_index, hwm_key = keys[1], keys[2], keys[3]
  local t_min_text = args[1]
  local src = args[2]
  local nfields = tonumber(args[3])
  local done = server.call('HGET', hwm_key, 'src')
  if done and id_at_or_above(done, src) then
    return {0, done}
  end
  local t_min = tonumber(t_min_text)
  local top, top_text = stream_top(hist)
  local cmd = {'XADD', hist}
  local is_late = top_text ~= nil and t_min < top
  if is_late then
    cmd[3] = top_text .. '-*'
  else
    cmd[3] = t_min_text .. '-*'
  end
  for k = 4, 3 + 2 * nfields do
    cmd[#cmd + 1] = args[k]
  end
  cmd[#cmd + 1] = 'src'
  cmd[#cmd + 1] = src
  local id = server.call(unpack(cmd))
  if is_late then
    server.call('ZADD', late_index, t_min_text, id)
  end
  server.call('HSET', hwm_key, 'src', src)
  return {1, id, is_late and 1 or 0}
end

local function version()
  return VERSION
end

server.register_function('qt_append', append)
server.register_function('qt_chunk', chunk)
server.register_function{function_name = 'qt_version', callback = version, flags = {'no-writes'}}
