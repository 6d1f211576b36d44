#!lua name=qt
--[[
qt's server-side write path (Valkey functions), loaded by qt_cli/core/store/writer.py with
FUNCTION LOAD REPLACE. Bump VERSION whenever this file changes: writers compare it with
`FCALL_RO qt_version 0` and reload the library when it differs or is missing.

qt_append   KEYS: stream, hwm hash            one call appends a whole batch to one stream
  ARGV: maxlen (0 = no trim), approx ('1' = MAXLEN ~), then the field-name schemas:
        nschemas, and per schema: nnames, name1 ... nameN;
        then count, sep, data: data holds, per entry, schema index (1-based), event ms,
        value1 ... valueN, EACH followed by sep (one byte that occurs in no value; the writer
        picks it). One blob instead of ~20 arguments per entry: far cheaper to pack for the
        client and to hand to the function for the server.
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

local VERSION = '3'

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
  local nschemas = tonumber(args[3])
  local i = 4
  -- Field names are sent once per call (a schema), the values once per entry.
  -- Each schema keeps a ready XADD command with its names filled in; per entry only the id
  -- and the values are written into it (cheaper than building a table per entry).
  local schemas = {}
  for s = 1, nschemas do
    local nnames = tonumber(args[i])
    local cmd = {'XADD', stream, ''}
    local schema = {cmd = cmd, n = nnames, session = nil, seq = nil}
    for j = 1, nnames do
      local name = args[i + j]
      cmd[2 + 2 * j] = name
      cmd[3 + 2 * j] = ''
      if name == 'session' then
        schema.session = j
      elseif name == 'seq' then
        schema.seq = j
      end
    end
    schemas[s] = schema
    i = i + nnames + 1
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

  for _ = 1, count do
    e = find(data, sep, pos, true)
    if e == nil then
      save_marks()
      return server.error_reply('qt_append: data holds fewer entries than count')
    end
    local schema = schemas[tonumber_(sub(data, pos, e - 1))]
    pos = e + 1
    e = find(data, sep, pos, true)
    if schema == nil or e == nil then
      save_marks()
      return server.error_reply('qt_append: bad entry in data')
    end
    local ms_text = sub(data, pos, e - 1)
    pos = e + 1
    -- The values go straight into the schema's XADD command (value j at 3 + 2j).
    local cmd = schema.cmd
    local nnames = schema.n
    for j = 1, nnames do
      e = find(data, sep, pos, true)
      if e == nil then
        save_marks()
        return server.error_reply('qt_append: data ends inside an entry')
      end
      cmd[3 + 2 * j] = sub(data, pos, e - 1)
      pos = e + 1
    end
    local session, seq_text, seq = '', nil, nil
    if schema.session ~= nil then
      session = cmd[3 + 2 * schema.session]
    end
    local fresh = true
    if session ~= '' and schema.seq ~= nil then
      seq_text = cmd[3 + 2 * schema.seq]
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
