-- Effectively-once append of LATE entries to one stream, for one consumer group (DESIGN §6):
-- outputs of retried or released messages, and dead-letter copies. They are older than
-- entries already appended, so the position watermark (append.lua) would drop them; each gets
-- an identity of its own instead: a token key per (group, message, output), set with NX
-- together with the XADD, in one script, so both happen or neither.
--
-- KEYS[1]    the stream
-- KEYS[2]    the group's watermark hash for this stream (only its `epoch` field is used here:
--            the same lease fence as append.lua)
-- KEYS[3…]   one token key per entry, in the stream's hash slot
-- ARGV[1]    the caller's lease epoch
-- ARGV[2]    MAXLEN ~ cap, 0 = uncapped
-- ARGV[3]    token lifetime in seconds (it only has to outlive the gap between this append and
--            the Postgres commit that settles the delivery)
-- ARGV[4…]   per entry: n, then n field/value arguments
--
-- An entry whose token exists was appended before (the relay crashed before settling the
-- delivery, and retried it): it is skipped. Everything is validated before the first write.
local epoch = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if epoch == nil or maxlen == nil or ttl == nil or ttl < 1 then
  return redis.error_reply('OUTBOX_BAD_ARGS epoch, maxlen and ttl must be numbers')
end
local i = 4
local entries = 0
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  if n == nil or n < 2 or n % 2 ~= 0 or i + n > #ARGV then
    return redis.error_reply('OUTBOX_BAD_ARGS malformed entry at argument ' .. i)
  end
  entries = entries + 1
  i = i + 1 + n
end
if entries ~= #KEYS - 2 then
  return redis.error_reply('OUTBOX_BAD_ARGS ' .. entries .. ' entries but ' .. (#KEYS - 2) .. ' token keys')
end

local stored_epoch = tonumber(redis.call('HGET', KEYS[2], 'epoch') or '0')
if epoch < stored_epoch then
  return redis.error_reply('OUTBOX_FENCED lease epoch ' .. epoch .. ' is older than epoch ' .. stored_epoch)
end
-- A key of another type would fail every XADD after its token was set: refuse before writing.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('OUTBOX_WRONGTYPE ' .. kind)
end

local appended = 0
local entry = 0
i = 4
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  entry = entry + 1
  if redis.call('SET', KEYS[2 + entry], '1', 'NX', 'EX', ttl) then
    local args = { KEYS[1] }
    if maxlen > 0 then
      args[#args + 1] = 'MAXLEN'
      args[#args + 1] = '~'
      args[#args + 1] = maxlen
    end
    args[#args + 1] = '*'
    for j = i + 1, i + n do
      args[#args + 1] = ARGV[j]
    end
    redis.call('XADD', unpack(args))
    appended = appended + 1
  end
  i = i + 1 + n
end
if epoch > stored_epoch then
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
return appended
