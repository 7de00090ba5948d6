//! A minimal RESP client for the Redis oracle, independent of the code under test.

use super::*;

// ------------------------------------------------------------------------------------------
// A minimal RESP2 client, for seeding and checksumming Redis directly (the oracle must not go
// through the code under test).

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

pub(crate) struct Resp {
    pub(crate) io: BufReader<TcpStream>,
}

impl Resp {
    pub(crate) async fn connect(url: &str) -> std::io::Result<Resp> {
        let rest = url.strip_prefix("redis://").unwrap_or(url);
        let (auth, host) = match rest.rsplit_once('@') {
            Some((auth, host)) => (Some(auth.to_owned()), host),
            None => (None, rest),
        };
        let host = host.split('/').next().unwrap_or(host);
        let stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(host))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        let mut resp = Resp {
            io: BufReader::new(stream),
        };
        if let Some(auth) = auth {
            let args: Vec<&str> = match auth.split_once(':') {
                Some(("", pass)) => vec!["AUTH", pass],
                Some((user, pass)) => vec!["AUTH", user, pass],
                None => vec!["AUTH", auth.as_str()],
            };
            if let Reply::Error(e) = resp.call(&args).await? {
                return Err(std::io::Error::other(e));
            }
        }
        Ok(resp)
    }

    pub(crate) async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Reply> {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            let arg = arg.as_ref();
            frame.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            frame.extend_from_slice(arg);
            frame.extend_from_slice(b"\r\n");
        }
        self.io.get_mut().write_all(&frame).await?;
        tokio::time::timeout(Duration::from_secs(10), read_reply(&mut self.io))
            .await
            .map_err(|_| std::io::Error::other("reply timed out"))?
    }
}

pub(crate) fn read_reply(
    io: &mut BufReader<TcpStream>,
) -> Pin<Box<dyn Future<Output = std::io::Result<Reply>> + Send + '_>> {
    Box::pin(async move {
        let mut line = Vec::new();
        io.read_until(b'\n', &mut line).await?;
        if line.len() < 3 || !line.ends_with(b"\r\n") {
            return Err(std::io::Error::other("short reply"));
        }
        let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let number = || {
            body.parse::<i64>()
                .map_err(|_| std::io::Error::other("bad length"))
        };
        Ok(match line[0] {
            b'+' => Reply::Simple(body),
            b'-' => Reply::Error(body),
            b':' => Reply::Int(number()?),
            b'$' => match usize::try_from(number()?) {
                Ok(len) => {
                    let mut data = vec![0; len + 2];
                    io.read_exact(&mut data).await?;
                    data.truncate(len);
                    Reply::Bulk(Some(data))
                }
                Err(_) => Reply::Bulk(None),
            },
            b'*' => match usize::try_from(number()?) {
                Ok(len) => {
                    let mut items = Vec::with_capacity(len);
                    for _ in 0..len {
                        items.push(read_reply(io).await?);
                    }
                    Reply::Array(Some(items))
                }
                Err(_) => Reply::Array(None),
            },
            _ => return Err(std::io::Error::other("unknown reply type")),
        })
    })
}
