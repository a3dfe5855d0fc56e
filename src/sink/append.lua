-- Effectively-once append of one batch to one stream, for one consumer group (DESIGN §6).
--
-- KEYS[1]  the stream
-- KEYS[2]  the group's watermark hash for this stream, in the stream's hash slot:
--          position = the highest position this group has appended here,
--          epoch    = the highest lease epoch that has written here
-- ARGV[1]  the caller's lease epoch
-- ARGV[2]  MAXLEN ~ cap, 0 = uncapped
-- ARGV[3…] per entry, in ascending position order:
--          position (fixed width, compares as a string), n, then n field/value arguments
--
-- Every message routed to this stream with a position at or below the watermark is in the
-- stream, so replaying a batch after a crash (between XADD and the cursor update) adds
-- nothing. A relay whose lease was taken over (older epoch) is refused before any write.
-- Everything is validated before the first write: a runtime error mid-script would keep the
-- writes made before it. Positions are compared as fixed-width strings because Lua numbers
-- lose precision above 2^53.
local epoch = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
if epoch == nil or maxlen == nil then
  return redis.error_reply('OUTBOX_BAD_ARGS epoch and maxlen must be numbers')
end
local i = 3
local previous = ''
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  if n == nil or n < 2 or n % 2 ~= 0 or i + 1 + n > #ARGV then
    return redis.error_reply('OUTBOX_BAD_ARGS malformed entry at argument ' .. i)
  end
  if ARGV[i] <= previous then
    return redis.error_reply('OUTBOX_BAD_ARGS positions must ascend at argument ' .. i)
  end
  previous = ARGV[i]
  i = i + 2 + n
end

local stored_epoch = tonumber(redis.call('HGET', KEYS[2], 'epoch') or '0')
if epoch < stored_epoch then
  return redis.error_reply('OUTBOX_FENCED lease epoch ' .. epoch .. ' is older than epoch ' .. stored_epoch)
end
local mark = redis.call('HGET', KEYS[2], 'position') or ''

-- One argument table for every XADD: the stream, the optional cap and '*' stay in front, each
-- entry's fields overwrite the rest, and unpack takes exactly this entry's count.
local args = { KEYS[1] }
if maxlen > 0 then
  args[#args + 1] = 'MAXLEN'
  args[#args + 1] = '~'
  args[#args + 1] = maxlen
end
args[#args + 1] = '*'
local base = #args

local appended = 0
local last = nil
i = 3
while i <= #ARGV do
  local position = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  if position > mark then
    for k = 1, n do
      args[base + k] = ARGV[i + 1 + k]
    end
    redis.call('XADD', unpack(args, 1, base + n))
    appended = appended + 1
    last = position
  end
  i = i + 2 + n
end

if last ~= nil then
  redis.call('HSET', KEYS[2], 'position', last, 'epoch', epoch)
elseif epoch > stored_epoch then
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
return appended
